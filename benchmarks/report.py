"""The sidecar benchmarks, written to ``docs/benchmarks.md`` with a plot (``./scripts/bench``).

1. Dapr's own perf scenario (dapr/dapr ``tests/perf/state_get_http``): GET of a missing key on
   ``state.in-memory``, 16 connections, a fixed 1000 QPS in total, latency percentiles. The statelab
   sidecar, a real daprd (``./scripts/daprd --no-build``) and a bare-server floor are measured in the same
   run, in interleaved rounds; daprd v1.18's published figures are shown beside them.
2. Throughput with 32 connections: save, get and delete on each store, beside a trivial endpoint of the
   same server (``/v1.0/healthz``) and direct redis-py calls to the same Redis at the same concurrency,
   for the statelab sidecar and daprd in interleaved rounds, reported as ratios (the machine is noisy;
   ratios hold better than absolute numbers).
3. Writers scaling: first-write writers with full jitter (``benchmarks.writers_scaling``), statelab only.
4. The notebook suite: papermill wall time per notebook with CI parameters.

Interleaving: each figure is taken in short rounds that alternate between the servers compared, the order
rotating from round to round (s d, d s, s d, …), and each side's figure is the median of its rounds. A
burst of load from elsewhere on the machine then hits both sides instead of one. daprd and the statelab
sidecar run side by side on the same store kind with the same settings (same ``Stack`` options, Redis
without replicas or AOF), seeded with the same key and value. Without a daprd binary, daprd is skipped.

Load comes from Debian's ``hey`` (``apt-get install hey``), a Go generator that is not the bottleneck.
The figures also go to ``docs/benchmarks.json``; when ``benchmarks/baseline.json`` (a run from before the
performance work, same format) is there, the report opens with a before/after table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from benchmarks import hey, writers_scaling
from statelab.local import Stack, free_port_block, on_free_ports

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "benchmarks" / "baseline.json"
DAPRD_V118 = {"p50": 0.58, "p90": 0.93, "p99": 1.36}  # ms, published perf run (Kubernetes, in-memory, HTTP)
STORES = ("in-memory", "sqlite", "redis")
OPS = ("get", "save", "delete", "trivial")
QS = ("p50", "p90", "p99")
BASE_PORT = {"statelab": 25000, "daprd": 25400}
SEED = [{"key": "bench-key", "value": {"item": "coffee", "qty": 2, "note": "x" * 64}}]

_load_samples: list[float] = []  # 1-minute load average, sampled before every round


def _stack(store: str, runtime: str = "statelab") -> Stack:
    base = BASE_PORT[runtime]
    return on_free_ports(Stack(store=store, replicas=0, runtime=runtime,  # type: ignore[arg-type]
                               http_port=base, redis_port=base + 4, grpc_port=base + 8, internal_grpc_port=base + 12,
                               run_dir=Path(tempfile.mkdtemp(prefix=f"bench-{runtime}-{store}-"))),
                         step=20)


def find_daprd() -> str | None:
    """The daprd binary's version ("1.18.3"), with ``STATELAB_DAPRD`` set to it so no Stack builds one; None
    when ``./scripts/daprd --no-build`` finds no binary."""
    done = subprocess.run([str(ROOT / "scripts" / "daprd"), "--no-build"], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None
    os.environ["STATELAB_DAPRD"] = lines[-1]
    version = subprocess.run([lines[-1], "--version"], capture_output=True, text=True).stdout.strip()
    return version or "?"


@contextlib.contextmanager
def _stacks(store: str, runtimes: tuple[str, ...]) -> Iterator[dict[str, Stack]]:
    """One stack per runtime on ``store``, running side by side."""
    with contextlib.ExitStack() as running:
        yield {runtime: running.enter_context(_stack(store, runtime)) for runtime in runtimes}


def _interleaved(sides: dict[str, Callable[[], hey.HeyResult]], rounds: int) -> dict[str, list[hey.HeyResult]]:
    """``rounds`` runs of each side, alternating, the order rotating each round (s d f, d f s, f s d, …)."""
    names = list(sides)
    out: dict[str, list[hey.HeyResult]] = {name: [] for name in names}
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            _load_samples.append(os.getloadavg()[0])
            out[name].append(sides[name]())
    return out


def _median(values: list[float], digits: int = 3) -> float:
    return round(statistics.median(values), digits)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def _statuses(results: list[hey.HeyResult]) -> dict[str, int]:
    codes: dict[str, int] = {}
    for r in results:
        for code, n in r.status_codes.items():
            codes[str(code)] = codes.get(str(code), 0) + n
        if r.errors:
            codes["errors"] = codes.get("errors", 0) + r.errors
    return codes


def _latency_summary(results: list[hey.HeyResult]) -> dict:
    return {"rps": _median([r.rps for r in results], 1), "statuses": _statuses(results),
            **{q: _median([r.p(int(q[1:])) for r in results]) for q in QS},
            "mean": _median([r.mean_ms or 0 for r in results]),
            "rounds": [{"p50": round(r.p(50), 3), "p99": round(r.p(99), 3), "mean": round(r.mean_ms or 0, 3)}
                       for r in results]}


def scenario_latency(seconds: float, rounds: int, daprd: str | None, warm_up: float = 2) -> dict:
    """Scenario 1 against the statelab sidecar, daprd and the floor, in interleaved rounds of ``seconds``."""
    port = free_port_block(1)
    floor = subprocess.Popen([sys.executable, "-m", "benchmarks.floor", str(port)], cwd=ROOT)
    loads = len(_load_samples)
    try:
        _wait_listening(port)
        with _stacks("in-memory", ("statelab", "daprd") if daprd else ("statelab",)) as stacks:
            urls = {name: f"{stack.endpoint}/v1.0/state/statestore/missing-key" for name, stack in stacks.items()}
            urls["floor"] = f"http://127.0.0.1:{port}/"
            for url in urls.values():
                hey.run(url, connections=16, seconds=warm_up, qps_per_worker=1000 / 16)
            runs = _interleaved({name: partial(hey.run, url, connections=16, seconds=seconds,
                                               qps_per_worker=1000 / 16, samples=True)
                                 for name, url in urls.items()}, rounds)
    finally:
        floor.kill()
        floor.wait()
    result = {"seconds": seconds, "rounds_per_side": rounds, **_latency_summary(runs["statelab"]),
              "floor": _latency_summary(runs["floor"]), "load": _load_range(loads)}
    if daprd:
        d = result["daprd"] = {"version": daprd, **_latency_summary(runs["daprd"])}
        result["vs_daprd"] = {q: _ratio(result[q], d[q]) for q in (*QS, "mean")}
        paired = [s["mean"] / x["mean"] for s, x in zip(result["rounds"], d["rounds"], strict=True) if x["mean"]]
        result["vs_daprd"]["mean_rounds"] = [round(x, 2) for x in paired]
    return result


def _load_range(since: int) -> dict:
    samples = _load_samples[since:] + [os.getloadavg()[0]]
    return {"min": round(min(samples), 2), "median": round(statistics.median(samples), 2), "max": round(max(samples), 2)}


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


def _seed(endpoint: str) -> object:
    """Save the benchmark's key through the sidecar and read it back (what GET then serves)."""
    state = f"{endpoint}/v1.0/state/statestore"
    request = urllib.request.Request(state, data=json.dumps(SEED).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()
    with urllib.request.urlopen(f"{state}/bench-key", timeout=10) as answer:
        return json.loads(answer.read())


def _load_op(endpoint: str, op: str, body: str, seconds: float, connections: int) -> hey.HeyResult:
    state = f"{endpoint}/v1.0/state/statestore"
    if op == "trivial":
        return hey.run(f"{endpoint}/v1.0/healthz", connections=connections, seconds=seconds)
    if op == "get":
        return hey.run(f"{state}/bench-key", connections=connections, seconds=seconds)
    if op == "save":
        return hey.run(state, connections=connections, seconds=seconds, method="POST", body_file=body)
    return hey.run(f"{state}/bench-key", connections=connections, seconds=seconds, method="DELETE")


def scenario_throughput(seconds: float, rounds: int, daprd: str | None, connections: int = 32,
                        warm_up: float = 1) -> dict:
    """Per store: GET, save, DELETE and the trivial endpoint, each in interleaved rounds of ``seconds`` per
    runtime. GET reads the seeded key; the saves write it again; the deletes remove it (then a missing key)."""
    runtimes = ("statelab", "daprd") if daprd else ("statelab",)
    rows: dict[str, list[dict]] = {name: [] for name in runtimes}
    body = Path(tempfile.mkstemp(suffix=".json")[1])
    body.write_text(json.dumps(SEED))
    loads = len(_load_samples)
    for store in STORES:
        with _stacks(store, runtimes) as stacks:
            seeded = {name: _seed(stack.endpoint) for name, stack in stacks.items()}
            if len({json.dumps(v, sort_keys=True) for v in seeded.values()}) != 1:
                raise RuntimeError(f"{store}: the runtimes read the seeded key back differently: {seeded}")
            for stack in stacks.values():  # warm up
                _load_op(stack.endpoint, "get", str(body), warm_up, connections)
            runs = {op: _interleaved({name: partial(_load_op, stack.endpoint, op, str(body), seconds, connections)
                                      for name, stack in stacks.items()}, rounds)
                    for op in OPS}
            for name in runtimes:
                row: dict = {"store": store, "runtime": name}
                row.update({f"{op}_rps": round(statistics.median(r.rps for r in runs[op][name])) for op in OPS})
                row["get_vs_trivial"] = round(row["get_rps"] / row["trivial_rps"], 2)
                row.update({f"{op}_p99_ms": round(statistics.median(r.p(99) for r in runs[op][name]), 2)
                            for op in OPS})
                row["statuses"] = {op: _statuses(runs[op][name]) for op in OPS}
                rows[name].append(row)
            if daprd:
                mine, theirs = rows["statelab"][-1], rows["daprd"][-1]
                for op in OPS:
                    mine[f"{op}_vs_daprd"] = _ratio(mine[f"{op}_rps"], theirs[f"{op}_rps"])
                    # round i of statelab over round i of daprd, taken next to each other
                    mine[f"{op}_vs_daprd_rounds"] = [round(s.rps / d.rps, 2) for s, d in
                                                     zip(runs[op]["statelab"], runs[op]["daprd"], strict=True)]
            if store == "redis":
                # the key again, then redis-py straight at statelab's Redis with the same concurrency
                _seed(stacks["statelab"].endpoint)
                direct = asyncio.run(_redis_direct(stacks["statelab"].redis_url(0), "myapp||bench-key", seconds * rounds,
                                                   connections))
                for name in runtimes:
                    rows[name][-1]["redis_py_rps"] = round(direct)
                    rows[name][-1]["get_vs_redis_py"] = round(rows[name][-1]["get_rps"] / direct, 2)
    body.unlink()
    return {"seconds": seconds, "rounds_per_side": rounds, "connections": connections, "load": _load_range(loads),
            "rows": rows["statelab"], "daprd": rows.get("daprd", []),
            **({"daprd_version": daprd} if daprd else {})}


def scenario_notebooks() -> list[dict]:
    from statelab.tools import runner

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


def _x(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}"


def _statuses_note(named: dict[str, dict[str, int]]) -> str:
    """One sentence on answers other than 2xx (and hey's errors), or that there were none."""
    odd = {name: {c: n for c, n in codes.items() if not c.startswith("2")} for name, codes in named.items()}
    odd = {name: codes for name, codes in odd.items() if codes}
    if not odd:
        return "Every answer was a 2xx."
    return "Answers other than 2xx: " + "; ".join(
        f"{name}: " + ", ".join(f"{n} × {c}" for c, n in codes.items()) for name, codes in odd.items()) + "."


def latency_markdown(latency: dict) -> str:
    d = latency.get("daprd")
    rows = [{"server": "statelab sidecar", **{q: latency[q] for q in (*QS, "mean")}}]
    if d:
        rows += [{"server": f"daprd {d['version']}, this machine, same run", **{q: d[q] for q in (*QS, "mean")}},
                 {"server": "**ratio statelab / daprd**", **{q: _x(latency["vs_daprd"][q]) for q in (*QS, "mean")}}]
    rows += [{"server": "floor: bare uvloop + httptools, fixed 204 (`benchmarks/floor.py`)",
              **{q: latency["floor"][q] for q in (*QS, "mean")}},
             {"server": "daprd v1.18 (published: Kubernetes, not this machine)", **DAPRD_V118, "mean": ""}]
    load = latency["load"]
    sides = "the statelab sidecar, daprd and the floor" if d else "the statelab sidecar and the floor (no daprd binary)"
    text = [f"`state.in-memory`, 16 connections, fixed 1000 QPS in total (`hey -c 16 -q 62.5`). {sides.capitalize()} "
            f"took turns: {latency['rounds_per_side']} rounds of {latency['seconds']} s each, the order rotating "
            "every round; each figure is the median of that server's rounds.\n",
            _table(rows) + "\n",
            f"Latencies in ms{'; a ratio below 1 means statelab is faster' if d else ''}. Goal: p50 ≤ 0.6 ms and p99 ≤ 1.4 ms on this "
            "2-core machine. hey reports times to 0.1 ms, so a p50 of 0.5 means 0.45–0.55 ms and a ratio of two "
            "such figures is coarse; the mean is taken over every request and is the finest figure. The floor is the "
            "least a server on this stack can do under the same load.\n"]
    notes = [f"1-minute load average during the rounds: {load['min']}–{load['max']} (median {load['median']})."]
    if d:
        paired = latency["vs_daprd"]["mean_rounds"]
        notes.append(f"Round by round, statelab's mean over daprd's ranged {min(paired):.2f}–{max(paired):.2f}.")
    notes.append(_statuses_note({"statelab": latency["statuses"], **({"daprd": d["statuses"]} if d else {}),
                                 "floor": latency["floor"]["statuses"]}))
    return "\n".join(text) + "\n" + " ".join(notes) + "\n"


def throughput_markdown(meta: dict, rows: list[dict], daprd_rows: list[dict]) -> str:
    theirs = {r["store"]: r for r in daprd_rows}
    version = meta.get("daprd_version")
    table = []
    for row in rows:
        for op in OPS:
            line = {"store": row["store"], "op": "trivial (healthz)" if op == "trivial" else op,
                    "statelab req/s": row[f"{op}_rps"]}
            if (d := theirs.get(row["store"])) is not None:
                line.update({f"daprd {version} req/s": d[f"{op}_rps"],
                             "**statelab / daprd**": _x(row[f"{op}_vs_daprd"])})
            line["statelab p99 ms"] = row[f"{op}_p99_ms"]
            if d is not None:
                line["daprd p99 ms"] = d[f"{op}_p99_ms"]
            table.append(line)
    own = [{"store": r["store"], "runtime": r["runtime"], "get_vs_trivial": r["get_vs_trivial"],
            **({"redis_py_rps": r["redis_py_rps"], "get_vs_redis_py": r["get_vs_redis_py"]} if "redis_py_rps" in r else {})}
           for pair in zip(rows, daprd_rows or [{}] * len(rows), strict=True) for r in pair if r]
    load = meta["load"]
    who = f"the statelab sidecar and daprd {version} (side by side, each with its own store of the same kind " \
          "and settings, seeded with the same key and value)" if version else "the statelab sidecar (no daprd binary)"
    statuses = {f"{r['runtime']} {r['store']} {op}": r["statuses"][op] for r in rows + daprd_rows for op in OPS}
    return "\n".join([
        f"Requests per second with `hey -c {meta['connections']}` against {who}: {meta['rounds_per_side']} rounds of "
        f"{meta['seconds']} s per server and operation, taking turns, the order rotating every round; each figure "
        "is the median of its rounds. `trivial` is `/v1.0/healthz` on the same server; GET reads the seeded key, "
        "save writes it again, DELETE removes it (and then a missing key). A ratio above 1 means statelab "
        "serves more.\n",
        _table(table) + "\n",
        "Each server against its own references: GET over its trivial endpoint, and GET over redis.asyncio "
        "HGETALL of the same key straight at (statelab's) Redis with the same concurrency.\n",
        _table(own) + "\n",
        f"Goals: GET ≥ 50 % of the trivial endpoint; Redis GET ≥ 40 % of direct redis-py. 1-minute load average "
        f"during the rounds: {load['min']}–{load['max']} (median {load['median']}). {_statuses_note(statuses)}\n",
    ])


def _paired(mine: list[dict], theirs: list[dict], key: str) -> list[float]:
    return [round(m[key] / t[key], 2) for m, t in zip(mine, theirs, strict=True) if t[key]]


def _verdict(ratios: list[float], better_below: bool) -> str:
    """What round-by-round ratios show, in words: which side was ahead in how many of the paired rounds."""
    lo, hi = min(ratios), max(ratios)
    mine = sum(1 for r in ratios if (r < 1 if better_below else r > 1))
    theirs = sum(1 for r in ratios if (r > 1 if better_below else r < 1))
    if mine == len(ratios):
        return f"rounds {lo:.2f}–{hi:.2f}, statelab ahead in all {len(ratios)}"
    if theirs == len(ratios):
        return f"rounds {lo:.2f}–{hi:.2f}, daprd ahead in all {len(ratios)}"
    tied = len(ratios) - mine - theirs
    return (f"rounds {lo:.2f}–{hi:.2f}: statelab ahead in {mine} of {len(ratios)}, daprd in {theirs}"
            f"{f', tied in {tied}' if tied else ''}")


def versus_markdown(latency: dict | None, meta: dict | None, rows: list[dict], daprd_rows: list[dict]) -> str:
    """The headline comparison in words, from the figures of sections 1 and 2."""
    version = (latency or {}).get("daprd", {}).get("version") or (meta or {}).get("daprd_version")
    out = ["## statelab vs daprd, same run\n",
           f"daprd {version} (built from `daprd/` by `./scripts/daprd`) and the statelab sidecar ran side by side on "
           "the same kind of store with the same settings and took turns in short rounds; the figures are medians "
           "of each side's rounds, the ratios statelab / daprd. Method and all figures: sections 1 and 2.\n"]
    if latency and latency.get("daprd"):
        d, r = latency["daprd"], latency["vs_daprd"]
        out.append(
            f"- **Scenario 1** (GET of a missing key, in-memory, 16 connections, 1000 QPS): p50 {latency['p50']} ms "
            f"for statelab against {d['p50']} ms for daprd (ratio {_x(r['p50'])}); p99 {latency['p99']} against "
            f"{d['p99']} ms ({_x(r['p99'])}); mean {latency['mean']} against {d['mean']} ms ({_x(r['mean'])}). "
            f"Round by round, the mean's ratio: {_verdict(r['mean_rounds'], True)}; the p99's: "
            f"{_verdict(_paired(latency['rounds'], d['rounds'], 'p99'), True)}. The bare-server floor in the same "
            f"rounds: p50 {latency['floor']['p50']}, p99 {latency['floor']['p99']} ms. "
            f"Load average {latency['load']['min']}–{latency['load']['max']} during these rounds.")
    if meta and daprd_rows:
        theirs = {t["store"]: t for t in daprd_rows}
        for op, name in (("get", "GET"), ("save", "Save"), ("delete", "DELETE")):
            parts = []
            for row in rows:
                rounds = row[f"{op}_vs_daprd_rounds"]
                parts.append(f"{row['store']} {_x(row[f'{op}_vs_daprd'])}× ({row[f'{op}_rps']} against "
                             f"{theirs[row['store']][f'{op}_rps']} req/s; {_verdict(rounds, False)})")
            out.append(f"- **{name} throughput**, 32 connections, statelab / daprd: " + "; ".join(parts) + ".")
        out.append(f"  Load average {meta['load']['min']}–{meta['load']['max']} during these rounds.")
    out.append("\nThe caveat: one run on a shared 2-core machine. hey, both sidecars, their stores and other "
               "sessions' work compete for the same 2 cores, so absolute figures move with the load; interleaving "
               "puts both sides under the same load, which is why the ratios mean more than the figures, but a ratio "
               "whose rounds fall on both sides of 1 does not show either side faster. Scenario 1's percentiles come in steps "
               "of 0.1 ms (hey's resolution).\n")
    return "\n".join(out) + "\n"


def _plot(latency: dict, throughput: list[dict], daprd_rows: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained", width_ratios=[1, 1.7])
    xs = range(len(QS))
    bars = [("statelab sidecar", latency)]
    if latency.get("daprd"):
        bars.append((f"daprd {latency['daprd']['version']} (same run)", latency["daprd"]))
    bars.append(("daprd v1.18 (published)", DAPRD_V118))
    width = 0.8 / len(bars)
    for i, (label, figures) in enumerate(bars):
        left.bar([x + (i - (len(bars) - 1) / 2) * width for x in xs], [figures[q] for q in QS], width=width, label=label)
    left.set_xticks(list(xs), QS)
    left.set(ylabel="ms", title="Scenario 1: GET missing key, in-memory, 1000 QPS")
    left.legend(frameon=False, fontsize="small")
    theirs = {r["store"]: r for r in daprd_rows}
    groups = [(r["store"], op, r, theirs.get(r["store"])) for r in throughput for op in ("get", "save", "delete")]
    gx = range(len(groups))
    sides = [("statelab", [g[2][f"{g[1]}_rps"] for g in groups])]
    if theirs:
        sides.append(("daprd", [g[3][f"{g[1]}_rps"] if g[3] else 0 for g in groups]))
    width = 0.8 / len(sides)
    for i, (label, values) in enumerate(sides):
        right.bar([x + (i - (len(sides) - 1) / 2) * width for x in gx], values, width=width, label=label)
    right.set_xticks(list(gx), [f"{op}\n{store}" for store, op, _, _ in groups], fontsize="x-small")
    right.set(ylabel="requests/s", title="Throughput, 32 connections (medians of interleaved rounds)")
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


def write_report(results: dict, target: Path, baseline: Path | None) -> None:
    """``target`` (markdown), its ``.png`` and, unless rendering that same file, its ``.json`` from ``results``."""
    latency, tp_rows = results.get("latency"), results.get("throughput")
    daprd_rows, tp_run = results.get("throughput_daprd", []), results.get("throughput_run")
    daprd, quick = results.get("daprd"), results.get("quick")
    sections: list[str] = []
    if latency:
        sections += ["## 1. Dapr's perf scenario: GET of a missing key\n", latency_markdown(latency)]
    if tp_rows:
        sections += ["## 2. Throughput, 32 connections\n", throughput_markdown(tp_run or {}, tp_rows, daprd_rows)]
    if results.get("writers"):
        sections += ["## 3. Writers scaling\n",
                     writers_scaling.markdown(results["writers"], 20 if quick else 50, "full-jitter")]
    if results.get("notebooks"):
        rows = results["notebooks"]
        sections += ["## 4. Notebook suite\n",
                     f"papermill with CI parameters on Redis, one kernel per notebook: "
                     f"{sum(r['seconds'] for r in rows):.1f} s in total (goal ≤ 120 s).\n", _table(rows) + "\n"]
    if latency and tp_rows:
        _plot(latency, tp_rows, daprd_rows, target.with_suffix(".png"))
        sections.append(f"![latency and throughput]({target.with_suffix('.png').name})\n")
    python = results.get("python") or f"{platform.python_implementation()} {platform.python_version()}"
    load_start, load_end = results.get("load_at_start"), results.get("load_at_end")
    wall = f", {results['wall_s']:.0f} s" if "wall_s" in results else ""
    head = [
        "# Benchmarks\n",
        f"Run {results['date']} on {results['cores']} cores, {python}, {results.get('machine', platform.machine())}"
        f"{' (--quick)' if quick else ''}"
        f"{wall}"
        f"{f', against daprd {daprd} built from `daprd/` by `./scripts/daprd`' if daprd else ''}."
        + (f" Load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load_start)} at the start, "
           f"{', '.join(f'{x:.2f}' for x in load_end)} at the end; the machine is shared, so read ratios measured "
           "in the same rounds rather than absolute figures." if load_start and load_end else "")
        + " Regenerate with `./scripts/bench`. What the profiles showed and what changed because of them: "
        "[performance.md](performance.md).\n",
    ]
    if daprd and (latency or tp_rows):
        head.append(versus_markdown(latency, tp_run, tp_rows or [], daprd_rows))
    if baseline is not None and baseline.is_file():
        head.append(compare(json.loads(baseline.read_text()), results))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(head + sections), encoding="utf-8")
    json_path = target.with_suffix(".json")
    if not (json_path.is_file() and json.loads(json_path.read_text()) == results):
        json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="short runs (scenario 1: 3 rounds of 3 s per server; throughput: 2 rounds of 1 s)")
    parser.add_argument("--skip", default="", help="comma-separated scenarios to skip: latency,throughput,writers,notebooks")
    parser.add_argument("--no-daprd", action="store_true", help="measure the statelab sidecar only")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--baseline", default=str(BASELINE), help="JSON of an earlier run to compare with")
    parser.add_argument("--render", metavar="JSON", help="measure nothing: write the report from an earlier run's JSON")
    args = parser.parse_args(argv)
    target = Path(args.output)
    if args.render:
        write_report(json.loads(Path(args.render).read_text()), target, Path(args.baseline))
        print(f"wrote {target} from {args.render}")
        return 0
    skip = set(filter(None, args.skip.split(",")))
    started = time.monotonic()
    daprd = None
    if not args.no_daprd and not {"latency", "throughput"} <= skip:
        daprd = find_daprd()
        if daprd is None:
            print("bench: no daprd binary (./scripts/daprd --no-build found none; ./scripts/daprd builds one): "
                  "measuring the statelab sidecar only", flush=True)
        else:
            print(f"bench: daprd {daprd} at {os.environ['STATELAB_DAPRD']}", flush=True)
    results: dict = {"date": time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), "cores": os.cpu_count(),
                     "python": f"{platform.python_implementation()} {platform.python_version()}",
                     "machine": platform.machine(), "quick": args.quick, "daprd": daprd,
                     "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    if "latency" not in skip:
        latency = scenario_latency(3 if args.quick else 10, 3 if args.quick else 6, daprd, 1 if args.quick else 2)
        results["latency"] = latency
        print("latency", {k: v for k, v in latency.items() if k not in ("rounds",)}, flush=True)
    if "throughput" not in skip:
        throughput = scenario_throughput(1 if args.quick else 2, 2 if args.quick else 5, daprd,
                                         warm_up=0.5 if args.quick else 1)
        results["throughput"] = throughput["rows"]
        results["throughput_daprd"] = throughput["daprd"]
        results["throughput_run"] = {k: v for k, v in throughput.items() if k not in ("rows", "daprd")}
        print("throughput", throughput, flush=True)
    if "writers" not in skip:
        counts = [1, 4, 16, 32] if args.quick else [1, 2, 4, 8, 16, 32, 64]
        results["writers"] = writers_scaling.run(counts, 20 if args.quick else 50, list(STORES), "full-jitter")
        print("writers done", flush=True)
    if "notebooks" not in skip:
        results["notebooks"] = scenario_notebooks()
        print("notebooks", results["notebooks"], flush=True)
    results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = round(time.monotonic() - started, 1)
    write_report(results, target, Path(args.baseline))
    print(f"wrote {target} in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
