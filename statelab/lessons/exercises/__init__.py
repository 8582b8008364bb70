"""The lessons' exercises: the learner writes the code that matters, and a check runs it against the sidecar.

One check per exercise, each called from a lesson's check cell with the learner's function:

- ``check_save`` (lesson 01): ``save_orders(url, orders)``, one POST that saves several values;
- ``check_strong_save`` (02): ``save(url, key, value, consistency)``, consistency where a save reads it;
- ``check_retry_loop`` (03): ``deposit(client, store, key, amount, max_attempts, backoff)``, the retry loop;
- ``check_attempt`` (04): ``attempt(client, store, key)``, one read-modify-write, run by ``run_writers``;
- ``check_backoff`` (05): ``backoff(attempt, rng)``, full jitter, run by real writers beside the built-in policies;
- ``check_sdk_save`` (06): ``save_if_unchanged(d, store, key, value, etag)`` with the Dapr Python SDK.

A check calls the learner's function on fresh keys, reads the store back and returns a ``Verdict``: ✓ or ✗, a
sentence per thing the learner's code actually did and, on ✗, what to change. It never raises into the notebook
(only an interrupt goes through): a stub that still raises ``NotImplementedError`` is "not written yet", any other
exception of the learner's code is reported with the line it came from. With ``metrics`` it records
``exercise_<name>`` (True or False), which the headless runs hold to True with the lessons' answers.

Like the rest of the learner wing it speaks only the Dapr APIs (HTTP, and gRPC through the SDK in lesson 06), so
every check runs the same against a real daprd.
"""

from statelab.lessons.exercises.raw_http import check_save, check_strong_save
from statelab.lessons.exercises.retry_loop import ACCOUNT, DEPOSIT, check_retry_loop
from statelab.lessons.exercises.sdk import check_sdk_save
from statelab.lessons.exercises.verdict import STUCK, Verdict
from statelab.lessons.exercises.writers import DRAWS, RETRIES, SLOW_DRAWS, check_attempt, check_backoff

__all__ = [
    "ACCOUNT",
    "DEPOSIT",
    "DRAWS",
    "RETRIES",
    "SLOW_DRAWS",
    "STUCK",
    "Verdict",
    "check_attempt",
    "check_backoff",
    "check_retry_loop",
    "check_save",
    "check_sdk_save",
    "check_strong_save",
]
