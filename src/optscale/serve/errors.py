"""Errors in the shape OpenAI-compatible servers (OpenAI, vLLM) answer with.

``{"error": {"message", "type", "param", "code"}}``: ``param`` names the field to fix in the
request (``optscale.alpha``, ``messages[0].content``, ``X-OptScale-Settings.alpha``), so an
SDK user reads where the problem is without reading the server's logs. An episode that failed
after it had sampled adds ``usage`` next to ``error``: what the failure cost.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "error_body", "STATUS_TYPES"]

#: The ``type`` of an error by HTTP status, as OpenAI names them.
STATUS_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    """A request that ends in an error answer; ``headers`` go with it (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        if param and not message.startswith(param):
            message = f"{param}: {message}"  # located in the message too, for clients that show only the message
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.usage: dict[str, int] | None = None  # the tokens a failed episode had spent, when it sampled

    def body(self) -> dict[str, Any]:
        body = error_body(self.status, self.message, self.param, self.code)
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": STATUS_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}
