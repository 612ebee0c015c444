"""What can go wrong, each with the exit code rabbitmqctl uses for it (BSD sysexits)."""

from __future__ import annotations

EX_USAGE = 64  # bad command line
EX_DATAERR = 65  # bad input data (a definitions file, a policy definition)
EX_NOUSER = 67  # the user named does not exist
EX_UNAVAILABLE = 69  # the broker cannot be reached, or the object does not exist
EX_SOFTWARE = 70  # the broker answered an error
EX_NOPERM = 77  # the credentials were refused
EX_CONFIG = 78  # the configuration file given with --config is unusable


class CtlError(Exception):
    """A failure reported as one line, "Error: <message>", with an exit code."""

    def __init__(self, message: str, exit_code: int = EX_SOFTWARE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CtlError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EX_USAGE)


class Unreachable(CtlError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EX_UNAVAILABLE)


class ApiError(CtlError):
    """The management API answered an error status; `error` and `reason` come from its JSON body."""

    def __init__(
        self, method: str, path: str, status: int, error: str, reason: str, body: object = None
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.error = error
        self.reason = reason
        self.body = body
        detail = f"{error}: {reason}" if reason and reason != error else error or reason
        code = EX_NOPERM if status in (401, 403) else EX_UNAVAILABLE if status == 404 else EX_SOFTWARE
        super().__init__(f"the management API answered {method} {path} with {status} ({detail})", code)


class Unsupported(CtlError):
    """The API has no such endpoint (404 where the object exists, or 405): a broker without it yet."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(
            f"this broker's management API does not support {error.method} {error.path} yet "
            f"(it answered {error.status})",
            EX_UNAVAILABLE,
        )
