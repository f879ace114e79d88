"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time; and the admin key
that the routes managing models (pull, load, unload, delete, copy) need."""

from __future__ import annotations

import hmac

from fastapi import Request

from ..errors import APIError
from .hosts import is_loopback


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def _matches(key: str, keys: tuple[str, ...]) -> bool:
    """Compared with every key, whatever matches, in constant time: timing tells nothing about which or how much."""
    candidate, matched = key.encode(), False
    for known in keys:
        matched |= hmac.compare_digest(candidate, known.encode())
    return matched


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
    admin = (settings.admin_api_key,) if settings.admin_api_key else ()
    if not _matches(key, (*settings.api_keys, *admin)):  # the admin key opens every route
        raise APIError(
            401,
            "Incorrect API key provided.",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_admin_key(request: Request) -> None:
    """ADMIN_API_KEY when set; else the API key (checked by the router). With no key at all, only a server on
    loopback lets these routes through: reachable from other machines, anyone could fill the disk or delete models."""
    settings = request.app.state.settings
    if settings.admin_api_key:
        if not _matches(presented_key(request) or "", (settings.admin_api_key,)):
            raise APIError(401, "This route manages models: it needs the admin key (ADMIN_API_KEY), as 'Authorization: "
                           "Bearer <key>' or 'X-API-Key: <key>'.", type="authentication_error", code="invalid_admin_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return
    if not settings.api_key_required and not is_loopback(settings.host):
        raise APIError(403, "Managing models (pull, load, unload, delete, copy) is refused on a server reachable from other "
                       "machines without a key: set ADMIN_API_KEY (or API_KEY_REQUIRED with API_KEY).",
                       type="permission_error", code="admin_key_required")
