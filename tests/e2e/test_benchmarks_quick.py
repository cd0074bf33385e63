"""Each benchmark still runs end to end in its --quick mode (seconds each).

No timing is asserted here (a busy CI machine decides those numbers): only that the script runs
to its verdict, exits 0 (met) or 1 (missed) rather than crashing, prints its target table, and,
where a benchmark checks a correctness property, that the property held.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    out = proc.stdout
    assert "| target |" in out and "load average" in out
    assert ("all targets met" in out) == (proc.returncode == 0), out[-1000:]
    return out


def test_async_write_bench_runs_and_every_await_returned_after_its_own_commit() -> None:
    out = _run("async_write_bench.py")
    [line] = [ln for ln in out.splitlines() if "each await returns after its own commit" in ln]
    assert line.endswith("| all | ok |"), line


def test_teams_bench_runs() -> None:
    out = _run("teams_bench.py")
    for arm in ("| route |", "| route, no-op validation |", "| bare validation |", "| bare turn |"):
        assert arm in out


def test_gateway_bench_runs_with_its_restart() -> None:
    out = _run("gateway_bench.py")
    assert "restart with 10,000 live rows" in out and "ready gateway's RSS" in out


def test_benchmarks_pin_with_cpu() -> None:
    """`--cpu N` measures `[gateway] cpu` (the gateways) and the same pin for the in-process runs."""
    cpu = str(max(os.sched_getaffinity(0)))
    assert f"pinned to CPU {cpu}" in _run("async_write_bench.py", "--cpu", cpu)
    assert f"servers pinned to CPU {cpu}" in _run("gateway_bench.py", "--cpu", cpu)


@pytest.mark.parametrize("bench", ["slack_bolt_bench.py", "gateway_bench.py", "instructions_bench.py"])
def test_a_bench_refuses_a_before_dir_without_an_installed_copy(tmp_path: Path, bench: str) -> None:
    """A checkout's `chatstate/` holds only the top module: run from it, the editable install
    would supply this tree's code and the "before" would silently measure the after."""
    (tmp_path / "chatstate").mkdir()
    (tmp_path / "chatstate" / "__init__.py").write_text("")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / bench), "--quick", "--before", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "pip install --no-deps --target" in proc.stderr, proc.stderr


@pytest.mark.parametrize("bench", ["slack_bolt_bench.py", "gateway_bench.py", "instructions_bench.py"])
def test_a_bench_refuses_a_before_dir_whose_code_its_gateways_would_not_run(tmp_path: Path, bench: str) -> None:
    """`python -m chatstate` puts its working directory first on the path: started from a
    checkout, a gateway given DIR on PYTHONPATH runs the checkout's code, and "before" measures
    the after. The benches start their gateways elsewhere, and refuse a DIR they would not run."""
    for module in ("__init__.py", "state/__init__.py", "gateway/echo.py"):  # an installed copy's shape, no server
        (tmp_path / "chatstate" / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "chatstate" / module).write_text("")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / bench), "--quick", "--before", str(tmp_path)],
        cwd=BENCHMARKS.parent,  # a checkout
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "a gateway started with it on its path runs nothing" in proc.stderr, proc.stderr
