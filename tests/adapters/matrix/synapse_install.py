"""Find (or install once) the Synapse the Matrix test tier runs: a pinned `matrix-synapse` from
PyPI in its own cached venv, never in the project's venv (its pins would fight ours).

    python tests/adapters/matrix/synapse_install.py      # prints the python to run Synapse with

Order: `$CHATSTATE_SYNAPSE_PYTHON` (an interpreter that can `import synapse`), else the cached
venv `$CHATSTATE_CACHE/synapse-<version>` (default `~/.cache/chatstate/...`), created with
`python -m venv` + `pip install matrix-synapse==<version>` under a file lock, so parallel test
sessions never race; a `.complete` marker is written only after pip succeeded, and a half-built
venv is rebuilt. Any failure raises RuntimeError with pip's tail: the tier fails, never skips.
This file imports nothing from the project so `.ci/run` can call it before the suite.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

SYNAPSE_VERSION = "1.163.2"  # pinned: the tier checks behaviour of this release
PYTHON_ENV = "CHATSTATE_SYNAPSE_PYTHON"
CACHE_ENV = "CHATSTATE_CACHE"
INSTALL_TIMEOUT_S = 900.0  # a cold pip install of Synapse and its wheels


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "chatstate")


def _check(python: str) -> str | None:
    """The Synapse version `python` imports, or None when it cannot."""
    try:
        out = subprocess.run(
            [python, "-c", "import synapse, sys; sys.stdout.write(synapse.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def synapse_python() -> str:
    """The interpreter to run `python -m synapse.app.homeserver` with; installs it if needed.

    Raises RuntimeError when `$CHATSTATE_SYNAPSE_PYTHON` cannot import synapse or pip fails.
    """
    given = os.environ.get(PYTHON_ENV)
    if given:
        if _check(given) is None:
            raise RuntimeError(f"${PYTHON_ENV}={given} cannot `import synapse`")
        return given
    venv = cache_dir() / f"synapse-{SYNAPSE_VERSION}"
    python = str(venv / "bin" / "python")
    marker = venv / ".complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"synapse-{SYNAPSE_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time; the others wait, then reuse
        if marker.exists() and _check(python) == SYNAPSE_VERSION:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"matrix-synapse=={SYNAPSE_VERSION}",
            ],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            if done.returncode != 0:
                tail = (done.stdout + done.stderr)[-3000:]
                raise RuntimeError(f"installing Synapse failed: {' '.join(step)}\n{tail}")
        if _check(python) != SYNAPSE_VERSION:
            raise RuntimeError(f"the Synapse venv at {venv} does not import synapse {SYNAPSE_VERSION}")
        marker.write_text(SYNAPSE_VERSION)
    return python


if __name__ == "__main__":
    print(synapse_python())
