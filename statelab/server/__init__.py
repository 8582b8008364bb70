"""The server wing: statelab's Dapr-compatible sidecar (``sidecar``) over real stores (``stores``).

It answers the Dapr state API over HTTP and gRPC exactly as daprd does (``docs/fidelity.md``). Nothing
here imports the learner side (client, writers, lessons, labs) or the process stack (``statelab.local``):
they meet only over the Dapr API, which is what lets every lesson run unchanged on a real daprd
(``tests/project/test_architecture.py`` checks the rule).
"""
