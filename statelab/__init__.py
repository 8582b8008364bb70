"""statelab: learn Dapr state management by doing it, against a real sidecar and real stores."""

__version__ = "0.1.0"
