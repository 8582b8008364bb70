"""The exception tree shared by both wings.

Stores raise these inside the sidecar, which turns them into Dapr status codes and error bodies.
The client raises the same classes when the sidecar (ours or a real daprd) answers with an error,
so a learner catches ``ETagMismatch`` whichever side of the HTTP call they are reading.
``is_save_conflict`` is the one rule for which refused saves a retry loop re-reads and tries again.
"""

from __future__ import annotations

import re
from typing import Any


class StatelabError(Exception):
    """Base of everything statelab raises on purpose."""


class DaprError(StatelabError):
    """An error in Dapr's terms: a message and, when it came over HTTP, status code and ``errorCode``."""

    def __init__(self, message: str, *, status: int = 0, error_code: str = "", body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.body = body

    def __str__(self) -> str:
        if self.status:
            return f"{self.status} {self.error_code}: {self.message}".replace(" : ", ": ")
        return self.message


# --- what a store can refuse (the sidecar maps these to status codes; the client raises them too) ---


class StoreError(DaprError):
    """A state store refused or failed an operation (daprd reports these as 500 unless said otherwise)."""


class ETagMismatch(StoreError):
    """409: the ETag given does not match the stored one, or first-write found an existing item."""


class ETagInvalid(StoreError):
    """400: the ETag is not valid for this store, e.g. a non-numeric ETag on Redis."""


class InvalidRequestOption(StoreError):
    """An unknown concurrency or consistency value, or a bad ttlInSeconds (daprd answers 500)."""


class TooManyOperations(StoreError):
    """A transaction larger than the store accepts."""


class TransactionFailed(StoreError):
    """500 ``ERR_STATE_TRANSACTION``: daprd reports every transaction failure this way, ETag ones too."""


class StackError(StatelabError, RuntimeError):
    """The local stack could not be started or changed: a busy port, a missing binary, a dead process."""


class ComponentError(StatelabError):
    """A component YAML could not be loaded or its metadata is invalid."""


# --- other error answers the client turns into exceptions ---------------------------------------


class StoreNotFound(DaprError):
    """400 ``ERR_STATE_STORE_NOT_FOUND``: no component with that name."""


class StoreNotConfigured(DaprError):
    """500 ``ERR_STATE_STORE_NOT_CONFIGURED``: the sidecar has no state store at all."""


class MalformedRequest(DaprError):
    """400 ``ERR_MALFORMED_REQUEST``: the body or key was rejected."""


class Unauthorized(DaprError):
    """401: missing or wrong ``dapr-api-token``."""


class SidecarUnavailable(DaprError):
    """The sidecar could not be reached (connection refused, reset)."""


class SidecarTimeout(SidecarUnavailable):
    """No answer in time: the operation may or may not have happened (outcome unknown)."""


def is_save_conflict(exc: BaseException, *, had_etag: bool) -> bool:
    """Whether a refused save is a conflict worth re-reading and retrying: nothing was written because
    someone else got there first.

    That is a 409 (``ETagMismatch``: a stale ETag, or first-write finding an existing item), or, on Redis,
    the ``500 ERR_STATE_SAVE`` a save *without* an ETag gets from a key created with first-write (Redis
    refuses such a create with 500, not 409: ``docs/dapr-behaviour.md`` §12 and §2.1). ``had_etag``:
    whether the refused save carried an ETag; with one, a 500 is a real failure, not a conflict.
    """
    if isinstance(exc, ETagMismatch):
        return not store_unreachable(str(exc))
    return (isinstance(exc, DaprError) and not had_etag and exc.status == 500
            and exc.error_code == "ERR_STATE_SAVE")


# What follows "error from state store: " when the store's connection failed, in daprd's words (Go's net errors)
# and in statelab's own (statelab/server/stores/resp.py).
_UNREACHABLE = re.compile(r"error from state store: (dial tcp |read tcp |write tcp |EOF$|redis connection |"
                          r"redis did not answer|redis client closed|.*i/o timeout)")


def store_unreachable(message: str) -> bool:
    """Whether a 409's message says the store could not be reached, not that the ETag was stale.

    daprd reports any failure of a save or delete that carries an ETag as ``possible etag mismatch``, a refused
    or dropped Redis connection included (``docs/dapr-behaviour.md`` §15). Such a 409 is no conflict: the write
    may even have been applied, if Redis took it and the reply was lost before the retries found Redis gone.
    """
    return _UNREACHABLE.search(message) is not None
