"""The record of a concurrent-writers run, and the checker that finds lost updates in it.

Every attempt of every operation is one ``Attempt``: who, which operation, when, the version (ETag)
it read, what the write answered, and the outcome:

- ``ok``: the save answered 204 (acknowledged);
- ``conflict``: 409, the ETag was stale, nothing was written (a 409 that says the store was unreachable is
  ``unknown``: ``errors.store_unreachable``);
- ``error``: refused without writing (connection refused, a 4xx other than 409);
- ``unknown``: no answer in time, or a 5xx: the write may or may not have happened.

The checker compares what was acknowledged with what the store holds at the end, Jepsen style: an
acknowledged increment missing from the counter is a lost update; the counter may exceed the
acknowledged count only by writes whose outcome is unknown.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

OK, CONFLICT, ERROR, UNKNOWN = "ok", "conflict", "error", "unknown"
OUTCOME_CODES = {OK: "o", CONFLICT: "c", ERROR: "e", UNKNOWN: "u"}  # one letter each, for compact summaries
OUTCOMES = (OK, CONFLICT, ERROR, UNKNOWN)


@dataclass(frozen=True)
class Attempt:
    writer: int
    op: int  # the writer's operation number, from 0
    attempt: int  # 1 for the first try of an operation
    sidecar: int  # index of the sidecar (app instance) the writer talks to
    key: str
    start: float  # seconds since the run started
    end: float
    etag_read: str | None  # the version the write was based on
    status: int | None  # HTTP status of the save; None if there was no answer (or the read failed)
    outcome: str
    detail: str = ""

    @property
    def op_id(self) -> str:
        return f"w{self.writer}-op{self.op}"


@dataclass
class Finding:
    """One lost-update finding, with a plain sentence for learners."""

    kind: str  # "missing-increments" | "missing-ids" | "same-version" | "too-many"
    sentence: str
    ops: list[str] = field(default_factory=list)


@dataclass
class History:
    attempts: list[Attempt] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(a.outcome == outcome for a in self.attempts)

    def acknowledged(self) -> list[Attempt]:
        return [a for a in self.attempts if a.outcome == OK]

    def attempts_per_success(self) -> list[int]:
        """For each acknowledged operation, how many attempts it took (its ``attempt`` number)."""
        return [a.attempt for a in self.acknowledged()]

    def outcomes(self) -> dict[str, int]:
        counts = Counter(a.outcome for a in self.attempts)
        return {o: counts.get(o, 0) for o in OUTCOMES}

    def by_group(self, groups: dict[int, str]) -> dict[str, list[Attempt]]:
        out: dict[str, list[Attempt]] = defaultdict(list)
        for a in self.attempts:
            out[groups.get(a.sidecar, "all")].append(a)
        return dict(out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_counter(history: History, finals: dict[tuple[str, str], Any], groups: dict[int, str]) -> list[Finding]:
    """Findings for increment runs. ``finals`` maps (group, key) to the counter read at the end."""
    findings: list[Finding] = []
    per_group = history.by_group(groups)
    for (group, key), final in sorted(finals.items()):
        attempts = [a for a in per_group.get(group, []) if a.key == key]
        acked = sum(a.outcome == OK for a in attempts)
        unknown = sum(a.outcome == UNKNOWN for a in attempts)
        value = final if isinstance(final, (int, float)) else 0
        where = f"key {key}" + ("" if group == "all" else f" on {group}")
        if value < acked:
            findings.append(Finding(
                "missing-increments",
                f"{_plural(acked - int(value), 'acknowledged increment')} of {where} vanished: "
                f"{acked} saves were answered 204, but the counter reads {value}.",
            ))
        elif value > acked + unknown:
            findings.append(Finding(
                "too-many",
                f"The counter of {where} reads {value}, more than the {acked} acknowledged increments plus "
                f"{unknown} with unknown outcome: some increment was applied twice.",
            ))
    findings += _same_version(history, groups)
    return findings


def check_append(history: History, finals: dict[tuple[str, str], Any], groups: dict[int, str]) -> list[Finding]:
    """Findings for append runs: each acknowledged operation's id must be in the final list."""
    findings: list[Finding] = []
    per_group = history.by_group(groups)
    for (group, key), final in sorted(finals.items()):
        present = set(final) if isinstance(final, list) else set()
        acked = [a for a in per_group.get(group, []) if a.key == key and a.outcome == OK]
        missing = sorted({a.op_id for a in acked} - present)
        if missing:
            where = f"key {key}" + ("" if group == "all" else f" on {group}")
            shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
            findings.append(Finding(
                "missing-ids",
                f"{_plural(len(missing), 'acknowledged append')} to {where} are not in the final list ({shown}): "
                "a later write replaced the list without them.",
                missing,
            ))
    findings += _same_version(history, groups)
    return findings


def _same_version(history: History, groups: dict[int, str]) -> list[Finding]:
    """Two acknowledged writes that read the same version of the same key: one overwrote the other."""
    seen: dict[tuple[str, str, str], list[Attempt]] = defaultdict(list)
    for a in history.acknowledged():
        if a.etag_read is not None:
            seen[(groups.get(a.sidecar, "all"), a.key, a.etag_read)].append(a)
    findings = []
    for (_, key, etag), acked in seen.items():
        if len(acked) > 1:
            first, others = acked[0], acked[1:]
            findings.append(Finding(
                "same-version",
                f"{first.op_id} and {_plural(len(others), 'other write')} ({', '.join(a.op_id for a in others[:3])}"
                f"{' …' if len(others) > 3 else ''}) were all acknowledged on top of version {etag} of {key}: "
                "only the last of them survives.",
                [a.op_id for a in acked],
            ))
    return findings
