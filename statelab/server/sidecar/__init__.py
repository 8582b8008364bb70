"""The local Dapr-compatible sidecar: ``http`` (transport), ``decode`` (bodies), ``api`` (the state API),
``server`` (start-up: components, stores, listening sockets, signals)."""
