"""Run Debian's ``hey`` load generator and read its report (latency percentiles, requests per second)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass
class HeyResult:
    rps: float
    percentiles_ms: dict[int, float] = field(default_factory=dict)  # 10, 25, 50, 75, 90, 95, 99
    status_codes: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    def p(self, q: int) -> float:
        return self.percentiles_ms[q]


def find_hey() -> str:
    found = shutil.which("hey")
    if not found:
        raise SystemExit("hey is not installed: apt-get install hey (Debian's package of the Go load generator)")
    return found


def run(url: str, *, connections: int, seconds: float, qps_per_worker: float | None = None, method: str = "GET",
        body_file: str | None = None, headers: dict[str, str] | None = None) -> HeyResult:
    cmd = [find_hey(), "-z", f"{seconds}s", "-c", str(connections), "-m", method, "-disable-compression"]
    if qps_per_worker:
        cmd += ["-q", f"{qps_per_worker:g}"]
    if body_file:
        cmd += ["-D", body_file, "-T", "application/json"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    return parse(out)


def parse(report: str) -> HeyResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", report).group(1))  # type: ignore[union-attr]
    pct = {int(q): float(s) * 1000 for q, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", report)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", report)}
    _, _, error_part = report.partition("Error distribution:")
    errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", error_part, re.M))
    return HeyResult(rps, pct, codes, errors)
