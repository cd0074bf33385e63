"""The one public error type of the store, with stable codes a caller can branch on."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    OPEN_FAILED = "OPEN_FAILED"  # cannot open/create the database (not SQLite, no permission)
    SCHEMA_UNSUPPORTED = "SCHEMA_UNSUPPORTED"  # user_version newer than this code knows
    WRITE_FAILED = "WRITE_FAILED"
    READ_FAILED = "READ_FAILED"
    CORRUPT = "CORRUPT"  # the file or a stored JSON value is unreadable
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"  # a size, depth or row-count limit
    INVALID_INPUT = "INVALID_INPUT"
    UNAVAILABLE = "UNAVAILABLE"  # backend unreachable, or the store was closed
    CONFLICT = "CONFLICT"  # `update` lost the race for a row more times than it may retry


# What `StateStoreError.operation` may say; "commit" is commit_staged / commit_staged_async.
OPERATIONS = frozenset(
    "open register register_if_absent compare_and_set update lookup lookup_many consume delete delete_if "
    "clear count entries sweep probe close commit".split()
)


class StateStoreError(Exception):
    """Raised by every store call that fails; `code` is stable, the message is for people: it
    names the limit and the offending size, never a stored or offered value."""

    def __init__(self, code: ErrorCode | str, operation: str, message: str, *, path: str | None = None) -> None:
        self.code = ErrorCode(code)
        self.operation = operation
        self.path = path
        where = f" [{path}]" if path else ""
        super().__init__(f"{self.code} during {operation}: {message}{where}")

    def __reduce__(self) -> tuple[object, ...]:  # keep code/operation/path across processes
        return (_rebuild, (self.code.value, self.operation, self.args[0], self.path))


def _rebuild(code: str, operation: str, text: str, path: str | None) -> StateStoreError:
    err = StateStoreError.__new__(StateStoreError)
    Exception.__init__(err, text)
    err.code, err.operation, err.path = ErrorCode(code), operation, path
    return err
