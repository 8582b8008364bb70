"""statelab: learn Dapr state management by doing it, against a real sidecar and real stores.

The names below are what notebooks use; they are imported on first use so that the sidecar process,
which also lives in this package, does not load the learner-side modules.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "open_session": "statelab.session",
    "Session": "statelab.session",
    "Metrics": "statelab.metrics",
    "StateClient": "statelab.client",
    "show": "statelab.display",
    "show_code": "statelab.display",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'statelab' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
