"""What `min_replicas_acked=1` costs per write: the same store calls on one primary with one
replica, with and without waiting for the replica's ack (WAIT) after each write.

    python benchmarks/replica_ack_bench.py            # 5,000 calls per op and arm
    python benchmarks/replica_ack_bench.py --quick    # 1,000

The two arms take turns in rounds of 250 calls, so a noisy neighbour slows both alike. The
servers are the test tier's (tests/redis_support.py: the wheel's redis-server, loopback,
appendonly everysec), a primary and a replica of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from a checkout; the test tier's servers

from redis_support import RedisServer  # noqa: E402

from chatstate.state import open_keyed_store  # noqa: E402

ROUND = 250


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    calls = 1_000 if parser.parse_args().quick else 5_000
    with tempfile.TemporaryDirectory() as d:
        primary = RedisServer(Path(d) / "primary", appendonly=True)
        primary.start()
        replica = RedisServer(
            Path(d) / "replica", appendonly=True, extra=["--replicaof", "127.0.0.1", str(primary.port)]
        )
        replica.start()
        try:
            arms = {
                acks: open_keyed_store(
                    "bench",
                    f"acks{acks}",
                    max_entries=calls * 2,
                    url=f"{primary.url}?prefix=b&min_replicas_acked={acks}",
                )
                for acks in (0, 1)
            }
            arms[1].register("warm", 0)  # waits until the replica is in sync and acks
            times: dict[tuple[int, str], list[float]] = {(a, op): [] for a in arms for op in ("register", "claim")}
            for start in range(0, calls, ROUND):
                for acks, store in arms.items():
                    for i in range(start, start + ROUND):
                        t = time.perf_counter()
                        store.register(f"k{i}", {"n": i})
                        times[(acks, "register")].append(time.perf_counter() - t)
                        t = time.perf_counter()
                        store.register_if_absent(f"c{i}", {"n": i})
                        times[(acks, "claim")].append(time.perf_counter() - t)
            print(f"{calls} calls per op and arm; primary + 1 replica on loopback (redis-server, appendonly everysec)")
            print("| op | min_replicas_acked | p50 µs | p99 µs | ops/s |")
            print("|---|---|---|---|---|")
            for (acks, op), samples in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
                samples.sort()
                p50, p99 = samples[len(samples) // 2], samples[int(len(samples) * 0.99)]
                print(f"| {op} | {acks} | {p50 * 1e6:.0f} | {p99 * 1e6:.0f} | {1 / statistics.fmean(samples):,.0f} |")
            for store in arms.values():
                store.close()
        finally:
            replica.stop()
            primary.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
