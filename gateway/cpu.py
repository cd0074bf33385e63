"""`[gateway] cpu`: run the whole gateway process on one CPU (Linux), an operator's opt-in.

Why: every awaited durable write crosses two threads (the event loop hands it to the store's
writer thread, which wakes the loop when it has committed). On a VM each wake-up of a thread on
another, idle, CPU costs a cross-CPU interrupt; we measured it as most of the difference
between an awaited write and a sync one (docs/performance.md). With both threads on one CPU a
wake-up is a local context switch. The GIL already keeps the gateway's Python on one core at a
time, so the cost is the C work that could have overlapped (SQLite, TLS, hashing) and losing the
scheduler's freedom to move a busy gateway off a busy CPU: hence off by default, like nginx's
`worker_cpu_affinity` and HAProxy's `cpu-map`.
"""

from __future__ import annotations

import os


def check_cpu(cpu: int) -> None:
    """Raise ValueError when this platform cannot pin, or `cpu` is not one this process may use
    (`taskset`, cgroup cpusets and container limits narrow that set). The config layer runs it,
    so the message names the key or variable and `start --check-only` (and `restart`, before it
    stops anything) refuses with exit 2."""
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("pinning to a CPU needs Linux (os.sched_setaffinity)")
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        raise ValueError(f"CPU {cpu} is not one this process may run on: {sorted(allowed)}")


def pin_process(cpu: int | None) -> None:
    """Pin every thread of this process, and so every thread it starts later, to `cpu`; raises
    ValueError as `check_cpu` (the config layer has normally refused such a value already)."""
    if cpu is None:
        return
    check_cpu(cpu)
    # sched_setaffinity applies to one thread: pin those already running (a logging thread),
    # and threads started afterwards inherit it from their creator.
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:  # the thread has just ended
            pass
