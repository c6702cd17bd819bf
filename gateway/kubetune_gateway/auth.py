"""Bearer tokens -> namespaces, from a mounted Secret key: JSON `{"<token>": "<namespace>"}`.

A token is compared in constant time against every known token (digests of equal length, and no
early exit), so response timing says nothing about how much of a guess was right. Error messages
about the file name entries by position, never by the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re

from kubetune_api.spec import DNS_SUBDOMAIN_PATTERN
from kubetune_gateway.errors import ApiError

_NAMESPACE_RE = re.compile(DNS_SUBDOMAIN_PATTERN)
MIN_TOKEN_LENGTH = 16


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    def __init__(self, tokens: dict[str, str]) -> None:
        self._entries = [(_digest(token), namespace) for token, namespace in tokens.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def namespace_for(self, token: str) -> str | None:
        wanted = _digest(token)
        found: str | None = None
        for digest, namespace in self._entries:
            if hmac.compare_digest(digest, wanted):
                found = namespace
        return found


def parse_tokens(text: str, source: str) -> TokenTable:
    """The tokens file, validated; a ValueError names the file and the entry (by position, not token)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f'{source}: expected a JSON object {{"<token>": "<namespace>"}}, got {type(raw).__name__}')
    for position, (token, namespace) in enumerate(raw.items(), start=1):
        if len(token) < MIN_TOKEN_LENGTH or token != token.strip():
            raise ValueError(
                f"{source}: entry {position}: a token must be at least {MIN_TOKEN_LENGTH} characters, "
                "without surrounding whitespace"
            )
        if not isinstance(namespace, str) or len(namespace) > 63 or not _NAMESPACE_RE.match(namespace):
            raise ValueError(f"{source}: entry {position}: the namespace must be a Kubernetes namespace name")
    return TokenTable(raw)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or a 401 in OpenAI's words."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    return token.strip()


def unknown_token() -> ApiError:
    return ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
