"""The values of a state request's ``options`` (and of ``concurrency`` / ``consistency`` query parameters),
shared by both wings: the sidecar validates them, the learner library sends them."""

FIRST_WRITE = "first-write"
LAST_WRITE = "last-write"
STRONG = "strong"
EVENTUAL = "eventual"
