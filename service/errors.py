"""The one error shape: ``{"error": {"code": str, "message": str}}`` with a fitting HTTP status."""

from __future__ import annotations

__all__ = ["STATUS_CODES", "ApiError", "ReadTimeout"]

# status -> default machine-readable code
STATUS_CODES: dict[int, str] = {
    400: "malformed",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal",
    503: "not_ready",
}


class ApiError(Exception):
    """An error the client sees as ``status`` + ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        # a message may quote what the client sent: keep it encodable (no lone surrogates)
        message = self.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return {"error": {"code": self.code, "message": message}}


class ReadTimeout(Exception):
    """The client did not send its request (headers or body) within the read deadline. Not an
    ``OSError``, so that no socket-error handler mistakes it for a dropped connection."""
