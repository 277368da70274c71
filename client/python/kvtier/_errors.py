"""Exceptions raised by the kvtier package: one per absl::StatusCode the daemon answers with."""

from __future__ import annotations

# absl::StatusCode numbering (the wire's Error.code).
CODE_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


class KvtierError(Exception):
    """A call failed; `code` is the absl::StatusCode, `message` the daemon's (or library's) text."""

    def __init__(self, code: int, message: str, operation: str = "") -> None:
        self.code = code
        self.code_name = CODE_NAMES.get(code, str(code))
        self.message = message
        self.operation = operation
        prefix = f"{operation}: " if operation else ""
        super().__init__(f"{prefix}{message}" if message else f"{prefix}{self.code_name}")


class InvalidArgument(KvtierError):
    """The request was malformed: a wrong layout, page size, block id or batch size."""


class PermissionDenied(KvtierError):
    """The daemon's namespace rules refuse this process (uid/gid) the namespace."""


class ResourceExhausted(KvtierError):
    """A quota or capacity limit was reached (pins, in-flight operations, buffers)."""


class FailedPrecondition(KvtierError):
    """The call came in the wrong state, e.g. a load before hello or buffer registration."""


class DeadlineExceeded(KvtierError, TimeoutError):
    """No reply within the client's timeout (Client.set_timeout). A wait that times out leaves its
    operation in flight: wait for it again before reusing its blocks."""


class Unavailable(KvtierError):
    """kvtierd is not there: the socket is missing or the connection closed (daemon gone)."""


_BY_CODE: dict[int, type[KvtierError]] = {
    3: InvalidArgument,
    4: DeadlineExceeded,
    7: PermissionDenied,
    8: ResourceExhausted,
    9: FailedPrecondition,
    14: Unavailable,
}


def error_for(code: int, message: str, operation: str = "") -> KvtierError:
    """The exception for a non-zero status code."""
    return _BY_CODE.get(code, KvtierError)(code, message, operation)
