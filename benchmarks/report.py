"""The sidecar benchmarks, written to ``docs/benchmarks.md`` with a plot (``./scripts/bench``).

1. Dapr's own perf scenario (dapr/dapr ``tests/perf/state_get_http``): GET of a missing key on
   ``state.in-memory``, 16 connections, a fixed 1000 QPS in total, latency percentiles — beside daprd
   v1.18's published figures.
2. Throughput with 32 connections: save, get and delete on each store, beside a trivial endpoint of the
   same server (``/v1.0/healthz``) and direct redis-py calls to the same Redis at the same concurrency,
   reported as ratios (the machine is noisy; ratios hold better than absolute numbers).
3. Writers scaling: first-write writers with full jitter (``benchmarks.writers_scaling``).
4. The notebook suite: papermill wall time per notebook with CI parameters.

Load comes from Debian's ``hey`` (``apt-get install hey``), a Go generator that is not the bottleneck.
The figures also go to ``docs/benchmarks.json``; when ``benchmarks/baseline.json`` (a run from before the
performance work, same format) is there, the report opens with a before/after table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import hey, writers_scaling
from statelab.local import Stack, on_free_ports

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "benchmarks" / "baseline.json"
DAPRD_V118 = {"p50": 0.58, "p90": 0.93, "p99": 1.36}  # ms, published perf run (Kubernetes, in-memory, HTTP)
STORES = ("in-memory", "sqlite", "redis")


def _stack(store: str) -> Stack:
    return on_free_ports(Stack(store=store, replicas=0, http_port=25000, redis_port=25004, grpc_port=25008,
                               internal_grpc_port=25012, run_dir=Path(tempfile.mkdtemp(prefix=f"bench-{store}-"))),
                         step=20)


def _fixed_rate(url: str, seconds: float) -> dict:
    hey.run(url, connections=16, seconds=2)  # warm up
    result = hey.run(url, connections=16, seconds=seconds, qps_per_worker=1000 / 16, samples=True)
    return {"rps": round(result.rps, 1), "statuses": result.status_codes,
            **{f"p{q}": round(result.p(q), 3) for q in (50, 90, 99)}, "mean": round(result.mean_ms or 0, 3)}


def scenario_latency(seconds: float) -> dict:
    with _stack("in-memory") as stack:
        sidecar = _fixed_rate(f"{stack.endpoint}/v1.0/state/statestore/missing-key", seconds)
        port = stack.http_port + 11  # inside the block _stack() found free
        floor = subprocess.Popen([sys.executable, "-m", "benchmarks.floor", str(port)], cwd=ROOT)
        try:
            _wait_listening(port)
            bare = _fixed_rate(f"http://127.0.0.1:{port}/", seconds)
        finally:
            floor.kill()
            floor.wait()
    return {"seconds": seconds, **sidecar, "floor": bare}


def _wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"benchmarks.floor did not listen on {port}")


async def _redis_direct(url: str, key: str, seconds: float, concurrency: int) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, max_connections=concurrency)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await client.hgetall(key)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return done / elapsed


def scenario_throughput(seconds: float, connections: int = 32) -> list[dict]:
    rows = []
    body = Path(tempfile.mkstemp(suffix=".json")[1])
    body.write_text(json.dumps([{"key": "bench-key", "value": {"item": "coffee", "qty": 2, "note": "x" * 64}}]))
    for store in STORES:
        with _stack(store) as stack:
            state = f"{stack.endpoint}/v1.0/state/statestore"
            hey.run(state, connections=4, seconds=1, method="POST", body_file=str(body))  # creates the key
            trivial = hey.run(f"{stack.endpoint}/v1.0/healthz", connections=connections, seconds=seconds)
            get = hey.run(f"{state}/bench-key", connections=connections, seconds=seconds)
            save = hey.run(state, connections=connections, seconds=seconds, method="POST", body_file=str(body))
            delete = hey.run(f"{state}/bench-key", connections=connections, seconds=seconds, method="DELETE")
            row = {
                "store": store,
                "trivial_rps": round(trivial.rps),
                "get_rps": round(get.rps),
                "save_rps": round(save.rps),
                "delete_rps": round(delete.rps),
                "get_vs_trivial": round(get.rps / trivial.rps, 2),
                "get_p99_ms": round(get.p(99), 2),
            }
            if store == "redis":
                # the key again, then redis-py straight at the same Redis with the same concurrency
                hey.run(state, connections=1, seconds=0.5, method="POST", body_file=str(body))
                direct = asyncio.run(_redis_direct(stack.redis_url(0), "myapp||bench-key", seconds, connections))
                row["redis_py_rps"] = round(direct)
                row["get_vs_redis_py"] = round(get.rps / direct, 2)
            rows.append(row)
    body.unlink()
    return rows


def scenario_notebooks() -> list[dict]:
    from statelab import runner

    out = Path(tempfile.mkdtemp(prefix="bench-notebooks-"))
    rows = []
    for nb in runner.discover([]):
        result = runner.run_one(nb, out, store="redis", cell_timeout=300, extra={})
        rows.append({"notebook": nb.name, "seconds": round(result.seconds, 1), "ok": result.ok})
    return rows


def _table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _plot(latency: dict, throughput: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    qs = ["p50", "p90", "p99"]
    xs = range(len(qs))
    left.bar([x - 0.2 for x in xs], [latency[q] for q in qs], width=0.4, label="statelab sidecar")
    left.bar([x + 0.2 for x in xs], [DAPRD_V118[q] for q in qs], width=0.4, label="daprd v1.18 (published)")
    left.set_xticks(list(xs), qs)
    left.set(ylabel="ms", title="GET missing key, in-memory, 16 conns, 1000 QPS")
    left.legend(frameon=False)
    stores = [r["store"] for r in throughput]
    for i, op in enumerate(("get_rps", "save_rps", "delete_rps", "trivial_rps")):
        right.bar([x + (i - 1.5) * 0.2 for x in range(len(stores))], [r[op] for r in throughput], width=0.2,
                  label=op.replace("_rps", ""))
    right.set_xticks(range(len(stores)), stores)
    right.set(ylabel="requests/s", title="Throughput, 32 connections")
    right.legend(frameon=False, fontsize="small")
    fig.savefig(target, dpi=110)
    plt.close(fig)


def compare(before: dict, after: dict) -> str:
    """A before/after table of the headline figures both runs have."""
    rows: list[tuple[str, object, object]] = []
    if "latency" in before and "latency" in after:
        for q in ("p50", "p90", "p99"):
            rows.append((f"scenario 1 {q}, ms", before["latency"][q], after["latency"][q]))
    old = {r["store"]: r for r in before.get("throughput", [])}
    for new in after.get("throughput", []):
        if (was := old.get(new["store"])) is None:
            continue
        for key in ("get_rps", "save_rps", "delete_rps", "get_vs_trivial", "get_vs_redis_py"):
            if key in was and key in new:
                rows.append((f"{new['store']} {key.replace('_rps', ' req/s').replace('_', ' ')}", was[key], new[key]))
    old_w = {(r["store"], r["writers"]): r for r in before.get("writers", [])}
    for new in after.get("writers", []):
        if new["writers"] >= 16 and (was := old_w.get((new["store"], new["writers"]))) is not None:
            rows.append((f"{new['store']}, {new['writers']} writers: wall s", was["wall_s"], new["wall_s"]))
    if before.get("notebooks") and after.get("notebooks"):
        rows.append(("notebook suite, s", round(sum(r["seconds"] for r in before["notebooks"]), 1),
                     round(sum(r["seconds"] for r in after["notebooks"]), 1)))
    lines = [f"## Before and after the performance work\n\nBefore: {before.get('note', before.get('date', ''))}. "
             f"After: this run.\n", "| figure | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {b} | {a} |" for name, b, a in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (10 s latency, 3 s throughput)")
    parser.add_argument("--skip", default="", help="comma-separated scenarios to skip: latency,throughput,writers,notebooks")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--baseline", default=str(BASELINE), help="JSON of an earlier run to compare with")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    target = Path(args.output)
    sections = [
        "# Benchmarks\n",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}"
        f"{' (--quick)' if args.quick else ''}. Regenerate with `./scripts/bench`. What the profiles showed and "
        "what changed because of them: [performance.md](performance.md).\n",
    ]
    latency = throughput = None
    results: dict = {"date": time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), "cores": os.cpu_count(),
                     "quick": args.quick}
    if "latency" not in skip:
        latency = scenario_latency(10 if args.quick else 60)
        results["latency"] = latency
        print("latency", latency, flush=True)
        sections += ["## 1. Dapr's perf scenario: GET of a missing key\n",
                     "`state.in-memory`, 16 connections, fixed 1000 QPS in total (`hey -c 16 -q 62.5`), "
                     f"{latency['seconds']} s.\n",
                     _table([{"server": "statelab sidecar", **{q: latency[q] for q in ('p50', 'p90', 'p99', 'mean')}},
                             {"server": "floor: bare uvloop + httptools, fixed 204 (`benchmarks/floor.py`)",
                              **{q: latency["floor"][q] for q in ('p50', 'p90', 'p99', 'mean')}},
                             {"server": "daprd v1.18 (published)", **DAPRD_V118, "mean": ""}]) + "\n",
                     "Latencies in ms. Goal: p50 ≤ 0.6 ms and p99 ≤ 1.4 ms on this 2-core machine. hey reports "
                     "times to 0.1 ms, so a p50 of 0.5 means 0.45–0.55 ms; the mean is taken over every request. "
                     "The floor is the same load against the least a server on this stack can do, measured "
                     "in the same run: on this shared machine it moves by 0.1 ms from hour to hour.\n"]
    if "throughput" not in skip:
        throughput = scenario_throughput(3 if args.quick else 10)
        results["throughput"] = throughput
        print("throughput", throughput, flush=True)
        sections += ["## 2. Throughput, 32 connections\n",
                     "Requests per second with `hey -c 32`; `trivial` is `/v1.0/healthz` on the same server, "
                     "`redis_py` is redis.asyncio HGETALL of the same key with 32 concurrent calls.\n",
                     _table(throughput) + "\n",
                     "Goals: GET ≥ 50 % of the trivial endpoint; Redis GET ≥ 40 % of direct redis-py.\n"]
    if "writers" not in skip:
        counts = [1, 4, 16, 32] if args.quick else [1, 2, 4, 8, 16, 32, 64]
        rows = writers_scaling.run(counts, 20 if args.quick else 50, list(STORES), "full-jitter")
        results["writers"] = rows
        print("writers done", flush=True)
        sections += ["## 3. Writers scaling\n", writers_scaling.markdown(rows, 20 if args.quick else 50, "full-jitter")]
    if "notebooks" not in skip:
        rows = scenario_notebooks()
        total = sum(r["seconds"] for r in rows)
        results["notebooks"] = rows
        print("notebooks", rows, flush=True)
        sections += ["## 4. Notebook suite\n",
                     f"papermill with CI parameters on Redis, one kernel per notebook: {total:.1f} s in total "
                     "(goal ≤ 120 s).\n", _table(rows) + "\n"]
    if latency and throughput:
        _plot(latency, throughput, target.with_suffix(".png"))
        sections.append(f"![latency and throughput]({target.with_suffix('.png').name})\n")
    baseline = Path(args.baseline)
    if baseline.is_file():
        sections[2:2] = [compare(json.loads(baseline.read_text()), results)]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(sections), encoding="utf-8")
    target.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
