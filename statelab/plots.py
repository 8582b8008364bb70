"""Every plot statelab draws: lessons, labs and the writers panel. Each function returns a matplotlib Figure.

They only draw what they are given (runs from ``statelab.writers`` and ``statelab.simulate``, timings from
the consistency lesson, the lesson 03 retry demo, a class view); no store is touched here. Figures are built
on ``matplotlib.figure.Figure``, never through pyplot's global state, so a worker thread (the writers panel)
may draw one while the kernel does something else; a notebook cell that returns one shows it once.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from statelab.history import OUTCOME_CODES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from statelab.lab.classroom import ClassView
    from statelab.lessons.consistency import SaveTimings
    from statelab.lessons.etags import RetryDemo
    from statelab.writers import RunResult

_TEACHING = threading.Lock()
_IPYTHON_TAUGHT = False
OUTCOME_COLORS = {"ok": "#2a9d8f", "conflict": "#e76f51", "error": "#6c757d", "unknown": "#9b5de5"}


def _field(row: Any, name: str) -> Any:
    """Rows may be mappings (sweeps) or dataclasses (simulator rows)."""
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def _figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs: Any
            ) -> tuple[Figure, Any]:
    """A new Figure and its axes, made without pyplot (thread-safe, and not kept in pyplot's figure list)."""
    from matplotlib.figure import Figure

    _teach_ipython_to_show_figures()
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _teach_ipython_to_show_figures() -> None:
    """Inside a kernel, tell IPython once to show a Figure as a PNG (what ``%matplotlib inline`` would do).

    Figures made without pyplot never load the notebook's backend, which is what usually does this.
    """
    global _IPYTHON_TAUGHT
    if _IPYTHON_TAUGHT or "IPython" not in sys.modules:
        return
    with _TEACHING:
        if _IPYTHON_TAUGHT:
            return
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats

        shell = get_ipython()
        if shell is not None and hasattr(shell, "display_formatter"):
            select_figure_formats(shell, {"png"}, bbox_inches="tight")
        _IPYTHON_TAUGHT = True


def attempts_histogram(results: Mapping[str, RunResult]) -> Figure:
    """How many attempts each successful write needed, per label (e.g. per policy).

    Up to three labels: grouped bars on whole-number ticks. More: one ECDF line per label, which stays readable
    where five groups of thin bars would not.
    """
    fig, ax = _figure(figsize=(7, 3.5))
    labels = list(results)
    top = max((max(r.history.attempts_per_success(), default=1) for r in results.values()), default=1)
    if len(labels) <= 3:
        width = 0.8 / max(1, len(labels))
        xs = range(1, top + 1)
        for i, label in enumerate(labels):
            counts = Counter(results[label].history.attempts_per_success())
            ax.bar([x + (i - (len(labels) - 1) / 2) * width for x in xs], [counts.get(x, 0) for x in xs],
                   width=width, label=label)
        ax.set_ylabel("writes")
        ax.set_xlim(0.5, top + 0.5)
    else:
        for label in labels:
            values = sorted(results[label].history.attempts_per_success())
            if values:
                ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=label)
        ax.set_ylabel("fraction of writes at or below")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    _whole_numbers(ax.xaxis)
    if len(labels) <= 3:
        _whole_numbers(ax.yaxis)
    ax.set_xlabel("attempts needed by a successful write")
    ax.set_title("Attempts per successful write")
    if len(labels) > 1:
        ax.legend(frameon=False, fontsize="small", loc="lower right" if len(labels) > 3 else "best")
    return fig


def _whole_numbers(axis: Any) -> None:
    """Ticks only at whole numbers: counts and attempt numbers have no 0.6 or 1.4."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


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
    """Every attempt as a bar from read to answer, one row per writer, coloured by outcome.

    Acknowledged writes that did not survive are drawn apart, dark and hatched, as "acknowledged, then lost":
    the history checker's findings name them (``statelab.history``): of the writes acknowledged on top of the
    same version of a key, all but the last to be answered were overwritten; an appended id missing from the
    final list was lost with its write. When the store lost more than the findings pin on a write (a stale
    write can also undo later ones), the title says how many more.
    """
    acknowledged = {a.op_id: a for a in result.history.acknowledged()}
    lost: set[tuple[int, int, int]] = set()  # (writer, op, attempt) of the acknowledged writes that vanished
    for finding in result.findings:
        group = [acknowledged[op] for op in finding.ops if op in acknowledged]
        if finding.kind == "same-version" and group:
            survivor = max(group, key=lambda a: a.end)
            lost |= {(a.writer, a.op, a.attempt) for a in group if a is not survivor}
        elif finding.kind == "missing-ids":
            lost |= {(a.writer, a.op, a.attempt) for a in group}
    unpinned = max(0, result.lost_updates - len(lost))
    writers = sorted({a.writer for a in result.history.attempts})[:max_writers]
    fig, ax = _figure(figsize=(9, 0.35 * len(writers) + 1.5))

    def bars(spans: list[Any], label: str, **style: Any) -> None:
        if spans:
            ax.barh([a.writer for a in spans], [max(a.end - a.start, 1e-4) for a in spans],
                    left=[a.start for a in spans], height=0.7, label=label, edgecolor="white", linewidth=0.6,
                    **style)

    shown = [a for a in result.history.attempts if a.writer in writers]
    for outcome, color in OUTCOME_COLORS.items():
        bars([a for a in shown if a.outcome == outcome and (a.writer, a.op, a.attempt) not in lost], outcome,
             color=color)
    vanished = [a for a in shown if (a.writer, a.op, a.attempt) in lost]
    bars(vanished, "acknowledged, then lost", color="#2b2d42", hatch="xxx")
    ax.set_yticks(writers, [f"writer {w}" for w in writers])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the start")
    title = "Timeline of attempts (read → save answered)"
    if lost or unpinned:
        title += f"\n{len(lost) + unpinned} acknowledged writes lost"
        if unpinned:
            title += f" ({unpinned} not pinned on a write: a stale save undid later ones)"
    ax.set_title(title)
    if result.history.attempts:
        ax.legend(frameon=False, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
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
    _whole_numbers(ax.yaxis)
    ax.set_title("What the writers were told vs what survived")
    ax.legend(frameon=False, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))  # below the bars, never on one
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


# --- lessons ---------------------------------------------------------------------------------------------


def save_latencies(timings: SaveTimings) -> Figure:
    """Lesson 02: the ECDF of save latencies per consistency mode, log x-axis, each median marked."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, ax = _figure(figsize=(7, 3.8))
    colours = {"strong": "tab:red", "eventual": "tab:blue"}
    for mode, values in timings.latency_ms.items():
        values = sorted(values)
        n = len(values)
        colour = colours.get(mode)
        ax.step(values, [(i + 1) / n for i in range(n)], where="post", color=colour,
                label=f"{mode} (p50 {timings.p50(mode):.2f} ms)")
        ax.axvline(timings.p50(mode), color=colour, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda x, _pos: f"{x:g}")  # 1.5, not 1.5×10⁰
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # 0.2 0.5 1 2 5: labels that never run together
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("save latency, ms (log scale)")
    ax.set_ylabel("fraction of saves at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{timings.samples} saves per mode on {timings.store_type or 'the store'}")
    return fig


def attempts_needed(demo: RetryDemo) -> Figure:
    """Lesson 03: how many increments needed 1, 2, 3, ... attempts."""
    fig, ax = _figure(figsize=(5, 2.8))
    hist = demo.histogram
    ax.bar([str(k) for k in hist], list(hist.values()), color="#4c72b0")
    ax.set_xlabel("attempts needed")
    ax.set_ylabel("increments")
    ax.set_title(f"{demo.writers} writers, {demo.successes} increments, {demo.lost} lost")
    return fig


# --- class contention mode -------------------------------------------------------------------------------


def class_attempts(view: ClassView) -> Figure:
    """Everyone's attempts on one time axis (one band per attendee), and attempts per success per attendee."""
    fig, (left, right) = _figure(1, 2, figsize=(11, 0.5 * max(3, len(view.runs)) + 2.2),
                                 gridspec_kw={"width_ratios": [3, 2]})
    origin = min((r.started_at for r in view.runs), default=0.0)
    names = {code: name for name, code in OUTCOME_CODES.items()}
    for row, run in enumerate(view.runs):
        writers = max(1, run.writers)
        for code in ("o", "c", "e", "u"):
            pts = [a for a in run.attempts if a[5] == code]
            if pts:
                ys = [row + 0.8 * (a[0] + 0.5) / writers - 0.4 for a in pts]
                xs = [run.started_at - origin + a[4] for a in pts]
                left.scatter(xs, ys, s=6, color=OUTCOME_COLORS[names[code]],
                             label=names[code] if row == 0 else None)
    left.set_yticks(range(len(view.runs)), [r.attendee for r in view.runs])
    left.invert_yaxis()
    left.set_xlabel("seconds since the first attendee started")
    left.set_title(f"Class {view.class_id}: every attempt, by attendee (writers stacked)")
    if view.runs:
        left.legend(frameon=False, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    top = max((max(r.attempts_per_success(), default=1) for r in view.runs), default=1)
    xs = list(range(1, top + 1))
    width = 0.8 / max(1, len(view.runs))
    for i, run in enumerate(view.runs):
        counts = Counter(run.attempts_per_success())
        right.bar([x + (i - (len(view.runs) - 1) / 2) * width for x in xs], [counts.get(x, 0) for x in xs],
                  width=width, label=run.attendee)
    right.set_xlabel("attempts needed by a successful increment")
    right.set_ylabel("increments")
    right.set_title(f"{view.acknowledged} increments, counter {view.counter}")
    if 1 < len(view.runs) <= 12:
        right.legend(frameon=False, fontsize="small")
    return fig
