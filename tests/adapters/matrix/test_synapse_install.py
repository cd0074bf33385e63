"""The Synapse tier's installer: an interpreter that cannot run Synapse is an error (the tier
fails), never a reason to skip; the cached venv it made is found again without pip."""

from __future__ import annotations

import sys

import pytest
import synapse_install
from synapse_server import SynapseServer


def test_a_python_without_synapse_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(synapse_install.PYTHON_ENV, sys.executable)  # the project's venv: no synapse
    with pytest.raises(RuntimeError, match="cannot `import synapse`"):
        synapse_install.synapse_python()
    monkeypatch.setenv(synapse_install.PYTHON_ENV, "/nonexistent/python")
    with pytest.raises(RuntimeError, match="cannot `import synapse`"):
        synapse_install.synapse_python()


def test_the_session_runs_the_pinned_synapse(synapse_server: SynapseServer) -> None:
    # the cached venv (or $CHATSTATE_SYNAPSE_PYTHON) the session fixture found
    assert synapse_install._check(synapse_server.python) == synapse_install.SYNAPSE_VERSION
