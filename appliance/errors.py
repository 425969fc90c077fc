"""The box's errors, one shallow hierarchy.

Domain code raises these and never imports HTTP; ``appliance.app`` maps them to responses in one
place. Each error carries a stable ``code`` (clients switch on it), a human ``message`` and optional
``details``. The HTTP status lives on the class so the mapping stays a single table.

    StockVerifyError
    ├── BadRequest            400  malformed input
    │   └── ValidationFailed  422  well-formed but not acceptable (row errors, bad fields)
    ├── Unauthenticated       401  no or expired credentials
    ├── Forbidden             403  authenticated, not allowed
    ├── NotFound              404
    ├── Conflict              409  refused because of current state (transitions, duplicates)
    ├── PayloadTooLarge       413
    ├── RateLimited           429
    ├── Unavailable           503  a dependency (disk, authority box) is not there
    └── InsufficientStorage   507  the disk is full (DISK_FULL) or read-only (DISK_READ_ONLY): nothing
                                   was stored; the same request passes once space is back

A 507 is retryable for handhelds and peers (``replication.retry`` retries every status >= 500), and its
``details`` carry ``retry_after_s``, the pause the box suggests; the one error mapping also sends it
as ``Retry-After`` whenever an error's details carry one.
"""

from __future__ import annotations

from typing import Any, ClassVar


class StockVerifyError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class BadRequest(StockVerifyError):
    status = 400
    default_code = "BAD_REQUEST"


class ValidationFailed(BadRequest):
    status = 422
    default_code = "VALIDATION"


class Unauthenticated(StockVerifyError):
    status = 401
    default_code = "UNAUTHENTICATED"


class Forbidden(StockVerifyError):
    status = 403
    default_code = "FORBIDDEN"


class NotFound(StockVerifyError):
    status = 404
    default_code = "NOT_FOUND"


class Conflict(StockVerifyError):
    status = 409
    default_code = "CONFLICT"


class PayloadTooLarge(StockVerifyError):
    status = 413
    default_code = "PAYLOAD_TOO_LARGE"


class RateLimited(StockVerifyError):
    status = 429
    default_code = "RATE_LIMITED"


class Unavailable(StockVerifyError):
    status = 503
    default_code = "UNAVAILABLE"


class InsufficientStorage(StockVerifyError):
    """The write was refused by the disk, not by the box's rules: the request was sound and nothing of
    it was kept, so the same request, sent again once space is back, is accepted."""

    status = 507
    default_code = "DISK_FULL"


def error_from(status: int, code: str, message: str, details: Any = None) -> StockVerifyError:
    """Rebuild an error another box raised (a forwarded lock answer), keeping its class, code and details,
    so the person sees exactly what that box would have told them."""
    classes: dict[int, type[StockVerifyError]] = {StockVerifyError.status: StockVerifyError}
    pending: list[type[StockVerifyError]] = [StockVerifyError]
    while pending:
        for sub in pending.pop().__subclasses__():
            classes.setdefault(sub.status, sub)
            pending.append(sub)
    cls = classes.get(status, StockVerifyError)
    return cls(message, code=code, details=details)
