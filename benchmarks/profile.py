"""Profile the sidecar under load: py-spy samples it while hey drives one operation on one store.

    .venv/bin/python -m benchmarks.profile redis get        # or: in-memory|sqlite  get|save|delete|missing
    .venv/bin/python -m benchmarks.profile sqlite save --seconds 10

Writes py-spy's collapsed stacks to ``build/profile-<store>-<op>.txt`` (any flame graph tool reads them)
and prints the functions with the most samples, by own time and including callees: where the hot path
spends its time, as used for ``docs/benchmarks.md``.
py-spy attaches with ptrace: run as root or with ``kernel.yama.ptrace_scope=0``.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import hey
from benchmarks.report import ROOT, STORES, _stack

OPS = ("get", "save", "delete", "missing")


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: ./scripts/setup installs it into .venv")
    return found


def _load(state: str, op: str, seconds: float, body: Path) -> hey.HeyResult:
    if op == "get":
        return hey.run(f"{state}/bench-key", connections=32, seconds=seconds)
    if op == "save":
        return hey.run(state, connections=32, seconds=seconds, method="POST", body_file=str(body))
    if op == "delete":
        return hey.run(f"{state}/bench-key", connections=32, seconds=seconds, method="DELETE")
    return hey.run(f"{state}/missing-key", connections=16, seconds=seconds, qps_per_worker=1000 / 16)


def summarize(raw: Path, top: int = 20) -> str:
    """Own and inclusive sample shares per function, from py-spy's raw (collapsed stack) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "including callees:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", choices=STORES)
    parser.add_argument("op", choices=OPS)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args(argv)
    out = ROOT / "build"
    out.mkdir(exist_ok=True)
    name = f"profile-{args.store}-{args.op}"
    body = Path(tempfile.mkstemp(suffix=".json")[1])
    body.write_text(json.dumps([{"key": "bench-key", "value": {"item": "coffee", "qty": 2, "note": "x" * 64}}]))
    try:
        with _stack(args.store) as stack:
            sidecar = next(pid for name_, pid in stack.pids.items() if not name_.startswith("redis"))
            state = f"{stack.endpoint}/v1.0/state/statestore"
            hey.run(state, connections=4, seconds=1, method="POST", body_file=str(body))  # the key exists
            common = ["--pid", str(sidecar), "--duration", str(int(args.seconds)), "--rate", "500", "--nonblocking"]
            raw = out / f"{name}.txt"
            spy = subprocess.Popen([_py_spy(), "record", *common, "--format", "raw", "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result = _load(state, args.op, args.seconds, body)
            _, err = spy.communicate()
            if spy.returncode:
                raise SystemExit(f"py-spy failed: {err.decode(errors='replace').strip()}")
    finally:
        body.unlink()
    print(f"{args.store} {args.op}: {result.rps:.0f} req/s, p50 {result.p(50):.1f} ms, p99 {result.p(99):.1f} ms "
          "(while being sampled)")
    print(summarize(raw))
    print(f"\nraw stacks: {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
