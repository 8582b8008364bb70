"""Lab 05: choose a consistency level from measurements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from statelab.lab.learner_code import described, is_placeholder, short
from statelab.lab.results import CheckResult, failed, passed

if TYPE_CHECKING:

    from statelab.lab.checker import Checker

# --- lab 05: choose a consistency level -----------------------------------------------------------------------

SCENARIOS: dict[str, tuple[str, str]] = {
    # name: (the right level, the fact that decides it)
    "page_views": ("eventual", "A few lost page views after a failover do not matter, and strong makes every one of "
                               "thousands of saves a second wait for the replica ({cost})."),
    "replica_report": ("strong", "The report reads the replica itself. Only a strong save makes the sidecar wait until "
                                 "the replica has the write (one WAIT per save); after an eventual save the replica "
                                 "may lag ({stale} — zero is luck, not a promise)."),
    "own_reads": ("eventual", "The sidecar reads from the Redis primary whether you ask for strong or not, so the "
                              "service always reads its own writes; strong would add {cost} and change nothing it "
                              "reads."),
}


def check_measurement(ck: Checker, timings: Any) -> CheckResult:
    from statelab.client import EVENTUAL, STRONG
    from statelab.lessons.consistency import SaveTimings

    if is_placeholder(timings):
        return failed("measurement", "`timings` is still the placeholder `...`: measure strong and eventual saves with "
                                      "lesson 02's `consistency.measure_saves(...)` and keep what it returns.")
    if not isinstance(timings, SaveTimings):
        return failed("measurement", f"`timings` is {described(timings)}; the check reads the whole result of "
                                      "`consistency.measure_saves(...)` (a `SaveTimings`: latencies, stale reads and "
                                      "WAIT counts), not a number or a summary of it. Keep what it returns.")
    n = min(len(timings.latency_ms[STRONG]), len(timings.latency_ms[EVENTUAL]))
    if n < 50:
        return failed("measurement", f"Only {n} saves per mode: measure at least 50 so the medians settle.")
    if timings.store_type != "state.redis":
        return failed("measurement", f"This was measured on {timings.store_type or 'a store'} without replicas, where "
                                      "strong does nothing. Run this lab on the replicated store (`store = \"redis\"`).")
    ck._last_timings = timings
    head = (f"{n} saves per mode on Redis: median strong {timings.p50(STRONG):.2f} ms, eventual "
            f"{timings.p50(EVENTUAL):.2f} ms ({timings.extra_p50_ms:+.2f} ms for strong)")
    if timings.skipped or timings.wait_calls is None:
        return passed("measurement", head + ". WAITs and replica reads were not counted (that needs the local stack).",
                       data=timings)
    if timings.wait_calls != timings.strong_saves:
        return failed("measurement", f"The primary ran {timings.wait_calls} WAITs for {timings.strong_saves} strong "
                                      "saves, not one each: did the sidecar start while the replica was down (lesson "
                                      "02, 'read once')? Re-run the setup cell, then measure again.", data=timings)
    if timings.stale[STRONG]:
        return failed("measurement", f"{timings.stale[STRONG]} replica reads right after a strong save were stale; "
                                      "strong should rule that out while the replica is up. Measure again.",
                       data=timings)
    return passed("measurement", head + f". The primary ran exactly one WAIT per strong save ({timings.wait_calls}); "
                                         f"replica reads right after a strong save were never stale (after eventual "
                                         f"saves: {timings.stale[EVENTUAL]}).", data=timings)


def check_replica_down(ck: Checker, strong_save_fails: Any) -> CheckResult:
    from statelab.lessons import consistency

    if is_placeholder(strong_save_fails):
        return failed("replica_down", "`strong_save_fails_when_replica_down` is still the placeholder `...`: predict "
                                       "True or False first, then run the check.")
    if not isinstance(strong_save_fails, bool):
        return failed("replica_down", f"`strong_save_fails_when_replica_down` is {described(strong_save_fails)}: "
                                       "write True or False (without quotes).")
    down = consistency.save_with_replica_down(ck.session, progress=ck.progress)
    if down.skipped:
        known = "on the local stack the strong save still answers 204, about one second late"
        where = down.skipped.removeprefix("Skipped: ")
        if strong_save_fails:
            return failed("replica_down", f"Not measured here: {where} But you predicted that it fails, and it does "
                                           f"not: {known} (docs/dapr-behaviour.md §12: the answer of WAIT is not "
                                           "checked).")
        return passed("replica_down", f"Not measured here: {where} Your prediction matches what Redis does: {known}.")
    fails = not down.strong_ok
    if strong_save_fails != fails:
        return failed("replica_down", f"You predicted that it {'fails' if strong_save_fails else 'succeeds'}. "
                                       f"{down.verdict()}", data=down)
    return passed("replica_down", f"Right. {down.verdict()} A 204 to a strong save does not prove a replica has the "
                                   "write.", data=down)


def check_choice(ck: Checker, answers: dict[str, Any]) -> CheckResult:
    from statelab.client import EVENTUAL, STRONG

    if missing := [n for n in SCENARIOS if n not in answers]:
        return failed("choice", f"Pass one answer per scenario: `check.choice({', '.join(f'{n}={n}' for n in SCENARIOS)})`"
                                 f"; missing: {', '.join(missing)}.")
    for name in SCENARIOS:
        answer = answers[name]
        if is_placeholder(answer):
            return failed("choice", f"`{name}` is still the placeholder `...`: write `(\"strong\" or \"eventual\", "
                                     "\"why, in one sentence\")`.")
        if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
            return failed("choice", f"`{name}` is {described(answer)}; write a pair `(level, reason)`, e.g. "
                                     "`(\"eventual\", \"because ...\")`: the level, and the reason a colleague can check.")
        if answer[0] not in (STRONG, EVENTUAL):
            spelt = (" (lower case, as the API spells it)" if isinstance(answer[0], str)
                     and answer[0].strip().lower() in (STRONG, EVENTUAL) else "")
            return failed("choice", f"The level of `{name}` is {described(answer[0])}: say \"strong\" or "
                                     f"\"eventual\"{spelt}.")
        if not isinstance(answer[1], str):
            return failed("choice", f"The reason for `{name}` is {described(answer[1])}: write it as a sentence (a "
                                     "str), ideally quoting what you measured.")
        if len(answer[1].split()) < 4:
            return failed("choice", f"Justify `{name}` in a sentence (ideally quoting what you measured); "
                                     f"{short(repr(answer[1]))} is too short for a colleague to follow.")
    timings = ck._last_timings
    cost = f"{timings.extra_p50_ms:+.2f} ms per save at the median here" if timings else "a replica round trip per save"
    stale = (f"your run saw {timings.stale[EVENTUAL]} stale replica reads after eventual saves"
             if timings and timings.stale.get(EVENTUAL) is not None else "this session could not read the replica")
    for name, (want, why) in SCENARIOS.items():
        if answers[name][0] != want:
            return failed("choice", f"You chose {answers[name][0]} for `{name}`. Think again: "
                                     f"{why.format(cost=cost, stale=stale)}")
    chosen = "; ".join(f"{n}: {answers[n][0]}" for n in SCENARIOS)
    return passed("choice", f"{chosen}. Strong is worth its cost ({cost}) only where something reads the replica "
                             "(or must survive losing the primary right after the 204); the sidecar itself always "
                             "reads the primary.")
