"""Writers scaling benchmark: 1…64 concurrent first-write writers with full jitter, on each store.

For each store it starts a local stack (one sidecar, no replica), runs ``run_writers`` for each writer
count and reports wall time, attempts, conflicts and attempts per success as a markdown table.
Not a test: numbers depend on the machine; read them as orders of magnitude and trends.

    .venv/bin/python -m benchmarks.writers_scaling [--writers 1,2,4,8,16,32,64] [--operations 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from statelab.local import Stack, on_free_ports
from statelab.writers import WritersConfig, run_writers

STORES = ("redis", "sqlite", "in-memory")


def run(writer_counts: list[int], operations: int, stores: list[str], policy: str) -> list[dict]:
    rows = []
    for store in stores:
        stack = on_free_ports(Stack(store=store, replicas=0, http_port=24000, redis_port=24004, grpc_port=24006,
                                    run_dir=Path(tempfile.mkdtemp(prefix=f"bench-{store}-"))))
        with stack:
            for n in writer_counts:
                result = run_writers(stack.endpoint, WritersConfig(writers=n, operations=operations, policy=policy,
                                                                   seed=1, timeout=30))
                rows.append({
                    "store": store, "writers": n, "operations": n * operations,
                    "wall_s": round(result.wall_time, 2), "attempts": result.attempts,
                    "conflicts": result.conflicts,
                    "attempts_per_success": round(result.attempts_per_success, 2),
                    "lost": result.lost_updates,
                })
    return rows


def markdown(rows: list[dict], operations: int, policy: str) -> str:
    head = (f"Writers scaling: first-write + ETag, {policy}, {operations} increments per writer, one hot key, "
            f"one sidecar; {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d')}.\n\n")
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", default="1,2,4,8,16,32,64")
    p.add_argument("--operations", type=int, default=50)
    p.add_argument("--stores", default=",".join(STORES))
    p.add_argument("--policy", default="full-jitter")
    args = p.parse_args(argv)
    rows = run([int(n) for n in args.writers.split(",")], args.operations, args.stores.split(","), args.policy)
    print(markdown(rows, args.operations, args.policy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
