"""Domain errors. Each carries its HTTP status and a stable code; main.py maps them to one
JSON shape: ``{"error": {"code": ..., "message": ..., "detail": {...}}}``."""

from __future__ import annotations

from typing import Any


class ModelportError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail or {}
        if code:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "detail": self.detail}}


class BadRequest(ModelportError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ModelportError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ModelportError):
    status_code = 403
    code = "forbidden"


class NotFound(ModelportError):
    status_code = 404
    code = "not_found"


class Conflict(ModelportError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ModelportError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ModelportError):
    status_code = 415
    code = "unsupported_media_type"


class Unprocessable(ModelportError):
    """The bytes arrived but cannot be accepted: malformed, unsafe, or inconsistent."""

    status_code = 422
    code = "unprocessable"


class ServiceUnavailable(ModelportError):
    status_code = 503
    code = "unavailable"


class InsufficientStorage(ModelportError):
    status_code = 507
    code = "insufficient_storage"
