"""Run Debian's ``hey`` load generator and read its report (latency percentiles, requests per second)."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field


@dataclass
class HeyResult:
    rps: float
    percentiles_ms: dict[int, float] = field(default_factory=dict)  # 10, 25, 50, 75, 90, 95, 99
    status_codes: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    mean_ms: float | None = None  # from every sample (csv mode): finer than the 0.1 ms of the percentiles

    def p(self, q: int) -> float:
        return self.percentiles_ms[q]


def find_hey() -> str:
    found = shutil.which("hey")
    if not found:
        raise SystemExit("hey is not installed: apt-get install hey (Debian's package of the Go load generator)")
    return found


def run(url: str, *, connections: int, seconds: float, qps_per_worker: float | None = None, method: str = "GET",
        body_file: str | None = None, headers: dict[str, str] | None = None, samples: bool = False) -> HeyResult:
    """hey's summary; with ``samples`` the figures come from every request's time (``-o csv``) instead."""
    cmd = [find_hey(), "-z", f"{seconds}s", "-c", str(connections), "-m", method, "-disable-compression"]
    if qps_per_worker:
        cmd += ["-q", f"{qps_per_worker:g}"]
    if body_file:
        cmd += ["-D", body_file, "-T", "application/json"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if samples:
        cmd += ["-o", "csv"]
    started = time.perf_counter()
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    return from_csv(out, time.perf_counter() - started) if samples else parse(out)


def from_csv(report: str, elapsed: float) -> HeyResult:
    rows = list(csv.DictReader(io.StringIO(report)))
    times = sorted(float(r["response-time"]) * 1000 for r in rows)
    if not times:
        raise ValueError("hey recorded no requests")
    pct = {q: times[min(len(times) - 1, int(len(times) * q / 100))] for q in (10, 25, 50, 75, 90, 95, 99)}
    codes: dict[int, int] = {}
    for r in rows:
        codes[int(r["status-code"])] = codes.get(int(r["status-code"]), 0) + 1
    return HeyResult(len(times) / elapsed, pct, codes, mean_ms=sum(times) / len(times))


def parse(report: str) -> HeyResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", report).group(1))  # type: ignore[union-attr]
    pct = {int(q): float(s) * 1000 for q, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", report)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", report)}
    _, _, error_part = report.partition("Error distribution:")
    errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", error_part, re.M))
    return HeyResult(rps, pct, codes, errors)
