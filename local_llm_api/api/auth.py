"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from ..core.errors import APIError


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


async def require_api_key(request: Request) -> None:
    settings = request.app.state.settings
    if not settings.api_key_required:
        return
    key = presented_key(request)
    if key is None:
        raise APIError(
            401,
            "Missing API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
            type="authentication_error",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Compare against every key, whatever matches, so timing tells nothing about which or how much.
    candidate = key.encode()
    matched = False
    for known in settings.api_keys:
        matched |= hmac.compare_digest(candidate, known.encode())
    if not matched:
        raise APIError(
            401,
            "Incorrect API key provided.",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
