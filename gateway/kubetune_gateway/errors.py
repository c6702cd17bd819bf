"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, and how errors get there.

Handlers raise ApiError; the app's middleware writes it. `param_path` turns a pydantic error's
location into the path of the bad value in the request, as the caller wrote it.
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(Exception):
    """An HTTP error in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = INVALID_REQUEST,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_

    def body(self) -> JSON:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None, code: str | None = None) -> ApiError:
    """400: the request is wrong, and `param` says where."""
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None) -> ApiError:
    return ApiError(404, message, param=param, code="not_found")


def param_path(loc: tuple[int | str, ...], given: Any) -> str | None:
    """The dotted path of a pydantic error location, as far as it exists in the input.

    pydantic appends the union member or validator it tried (`n_epochs.int`, `...literal['auto']`);
    those are not parameters the caller sent, so the path stops where the input does.
    """
    parts: list[str] = []
    node = given
    for step in loc:
        if isinstance(node, dict) and isinstance(step, str) and step in node:
            parts.append(step)
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            parts.append(f"[{step}]")
            node = node[step]
        elif isinstance(node, dict) and isinstance(step, str):
            parts.append(step)  # a missing (required) parameter: named all the same
            break
        else:
            break
    return ".".join(parts).replace(".[", "[") or None
