"""Workshop labs: the checks behind ``labs/NN_*_lab.ipynb``, and the class contention mode.

One module per lab (``lab01_fix_the_docs`` … ``lab05_consistency``), the ``Checker`` that runs their checks
(``checker``), what a check returns (``results``), how it calls and watches learner code (``learner_code``,
``recording``) and class mode (``classroom``). ``catalogue`` holds the answers learners actually write, wrong
and right, with the verdict and the words each check must give them (``tests/labs/test_catalogue.py`` runs
them all against real sidecars); ``guide`` turns it into the instructor guide, ``labs/INSTRUCTOR.md``.

A lab's setup cell makes one ``Checker("02_increment_lab", lab)``; each check cell passes the learner's
own function objects (or values) to one of its methods, e.g. ``check.increment(attempt, backoff,
max_attempts)``. A check never looks at cells: it calls those functions against the sidecar, watches
what they send (a recording ``StateClient``, or ``requests`` itself), reads the store back and, for the
concurrency labs, runs them from many threads and checks the recorded history. So learners may edit,
split, reorder, duplicate or delete cells, and re-run a check as often as they like: each run uses fresh
keys and gives the same verdict for the same code.

A check returns a ``CheckResult`` that shows as ``✓`` with a short explanation, or ``✗`` with a hint.
It never raises, whatever the learner's code does (a failing check must not stop a headless run), and it
records ``check_<name>`` (True/False) plus the ordered list ``checks``, ``first_failed_check``,
``first_failed_hint`` and ``checks_passed`` in the notebook's ``Metrics``: that is how CI tells a
solved lab from a handout (``tests/labs/``).

Class contention mode (``labs/README.md``): every attendee's lab-02 writers increment one shared key on
the instructor's sidecar; each attendee's run saves a summary of its history under the class prefix,
and ``class_view`` reads them back with bulk get. Everything goes over the Dapr API, so it works against
a real daprd.
"""

from statelab.lab.checker import LABS, Checker
from statelab.lab.classroom import (
    ClassKeys,
    class_run,
    class_view,
    default_attendee,
    open_class,
    reset_class,
    simulate_attendees,
)
from statelab.lab.lab03_safe_delete import LOSER_STATUS, aba_delete
from statelab.lab.results import CheckResult, Note

__all__ = [
    "LABS", "LOSER_STATUS", "CheckResult", "Checker", "ClassKeys", "Note", "aba_delete", "class_run", "class_view",
    "default_attendee", "open_class", "reset_class", "simulate_attendees",
]
