"""Plots of concurrent-writer runs (lessons 04 and 05). Each function returns a matplotlib Figure.

They only draw what ``statelab.writers`` and ``statelab.simulate`` return; no store is touched here.
Figures are closed in pyplot before being returned, so the notebook cell that returns one shows it once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from statelab.writers import RunResult

OUTCOME_COLORS = {"ok": "#2a9d8f", "conflict": "#e76f51", "error": "#6c757d", "unknown": "#9b5de5"}


def _field(row: Any, name: str) -> Any:
    """Rows may be mappings (sweeps) or dataclasses (simulator rows)."""
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def _figure(*args: Any, **kwargs: Any):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(*args, layout="constrained", **kwargs)
    plt.close(fig)
    return fig, ax


def attempts_histogram(results: Mapping[str, RunResult]) -> Figure:
    """How many attempts each successful write needed, one bar group per label (e.g. per policy)."""
    fig, ax = _figure(figsize=(7, 3.5))
    labels = list(results)
    width = 0.8 / max(1, len(labels))
    top = max((max(r.history.attempts_per_success(), default=1) for r in results.values()), default=1)
    xs = range(1, top + 1)
    for i, label in enumerate(labels):
        counts = Counter(results[label].history.attempts_per_success())
        ax.bar([x + (i - (len(labels) - 1) / 2) * width for x in xs], [counts.get(x, 0) for x in xs],
               width=width, label=label)
    ax.set_xlabel("attempts needed by a successful write")
    ax.set_ylabel("writes")
    ax.set_title("Attempts per successful write")
    if len(labels) > 1:
        ax.legend(frameon=False)
    return fig


def scaling(rows: Sequence[Mapping[str, Any]], *, by: str = "policy") -> Figure:
    """Attempts per success and wall time against the number of writers (rows from a sweep)."""
    fig, (left, right) = _figure(1, 2, figsize=(9, 3.5))
    for label in dict.fromkeys(r[by] for r in rows):
        mine = sorted((r for r in rows if r[by] == label), key=lambda r: r["writers"])
        xs = [r["writers"] for r in mine]
        left.plot(xs, [r["attempts_per_success"] for r in mine], marker="o", label=str(label))
        right.plot(xs, [r["wall_time"] for r in mine], marker="o", label=str(label))
    left.set(xlabel="writers", ylabel="attempts per success", title="Attempts grow with contention")
    right.set(xlabel="writers", ylabel="wall time (s)", title="Time to finish all writes")
    left.legend(frameon=False)
    return fig


def timeline(result: RunResult, *, max_writers: int = 16) -> Figure:
    """Every attempt as a bar from read to answer, one row per writer, coloured by outcome."""
    writers = sorted({a.writer for a in result.history.attempts})[:max_writers]
    fig, ax = _figure(figsize=(9, 0.35 * len(writers) + 1.5))
    for outcome, color in OUTCOME_COLORS.items():
        spans = [a for a in result.history.attempts if a.outcome == outcome and a.writer in writers]
        if spans:
            ax.barh([a.writer for a in spans], [max(a.end - a.start, 1e-4) for a in spans],
                    left=[a.start for a in spans], color=color, height=0.7, label=outcome)
    ax.set_yticks(writers, [f"writer {w}" for w in writers])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the start")
    ax.set_title("Timeline of attempts (read → save answered)")
    if result.history.attempts:
        ax.legend(frameon=False, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return fig


def acknowledged_vs_surviving(results: Mapping[str, RunResult]) -> Figure:
    """Acknowledged updates next to those still in the store at the end, per run label."""
    fig, ax = _figure(figsize=(6, 3.5))
    labels = list(results)
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [results[k].acknowledged for k in labels], width=0.4, label="acknowledged (204)")
    ax.bar([x + 0.2 for x in xs], [results[k].surviving for k in labels], width=0.4, label="in the store at the end")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("updates")
    ax.set_title("What the writers were told vs what survived")
    ax.legend(frameon=False)
    return fig


def simulator_overlay(simulated: Sequence[Any], real: Sequence[Any] = (), *,
                      metric: str = "calls_per_client") -> Figure:
    """Simulated curves (lines) with real runs (markers), per policy, against the number of clients."""
    fig, ax = _figure(figsize=(7, 3.8))
    colors: dict[str, str] = {}
    for policy in dict.fromkeys(_field(r, "policy") for r in simulated):
        mine = sorted((r for r in simulated if _field(r, "policy") == policy), key=lambda r: _field(r, "clients"))
        (line,) = ax.plot([_field(r, "clients") for r in mine], [_field(r, metric) for r in mine],
                          label=f"{policy} (simulated)")
        colors[policy] = line.get_color()
    for policy in dict.fromkeys(_field(r, "policy") for r in real):
        mine = sorted((r for r in real if _field(r, "policy") == policy), key=lambda r: _field(r, "clients"))
        ax.plot([_field(r, "clients") for r in mine], [_field(r, metric) for r in mine], "o",
                color=colors.get(policy), label=f"{policy} (real sidecar)")
    ax.set_xlabel("clients (writers)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title("Simulation vs real runs" if real else "The blog post's model, simulated")
    ax.legend(frameon=False, fontsize="small")
    return fig


def policy_delays(names: Sequence[str], *, base: float, cap: float, attempts: int = 10, samples: int = 200,
                  seed: int = 7) -> Figure:
    """What each retry policy waits before retry n: the median and the 10-90 % band of many draws."""
    import random
    import statistics

    from statelab.backoff import policy_from_name

    fig, ax = _figure(figsize=(7, 3.8))
    xs = list(range(1, attempts + 1))
    for name in names:
        rng = random.Random(seed)
        draws = []
        for _ in range(samples):
            policy = policy_from_name(name, base=base, cap=cap).new()
            draws.append([policy.delay(n, rng) * 1000 for n in xs])
        per_attempt = list(zip(*draws, strict=True))
        median = [statistics.median(d) for d in per_attempt]
        deciles = [statistics.quantiles(d, n=10) if len(set(d)) > 1 else [d[0]] * 9 for d in per_attempt]
        (line,) = ax.plot(xs, median, marker="o", markersize=3, label=name)
        ax.fill_between(xs, [q[0] for q in deciles], [q[-1] for q in deciles], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("retry number")
    ax.set_ylabel("wait before the retry (ms)")
    ax.set_title(f"Retry policies, base {base * 1000:g} ms, cap {cap * 1000:g} ms (median and 10–90 %)")
    ax.legend(frameon=False, fontsize="small")
    return fig
