"""The one error shape: ``{"error": {"code": str, "message": str}}`` with a fitting HTTP status."""

from __future__ import annotations

__all__ = ["STATUS_CODES", "ApiError"]

# status -> default machine-readable code
STATUS_CODES: dict[int, str] = {
    400: "malformed",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal",
    503: "not_ready",
}


class ApiError(Exception):
    """An error the client sees as ``status`` + ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}
