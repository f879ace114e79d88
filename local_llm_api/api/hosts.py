"""DNS rebinding protection: a web page on an attacker's domain whose name is rebound to this machine (or to a
machine that forwards to it, such as a container's published port or a proxy that passes `Host` on) reaches the
server, and the browser sends the attacker's name as `Host` (Ollama's CVE-2024-28224). So the server answers only
Host names that are this machine's: localhost names, its own host name, IP addresses (never the product of
rebinding), and ALLOWED_HOSTS (the images' own service names; a custom domain). Wherever it listens, loopback
or all interfaces; `ALLOWED_HOSTS=*` turns the check off."""

from __future__ import annotations

import ipaddress
import socket

from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..errors import APIError
from .errors import ErrorRenderers


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_host_names(settings: Settings) -> set[str] | None:
    """The host names to accept (IP addresses always pass); None: any (`ALLOWED_HOSTS=*`)."""
    configured = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
    if "*" in configured:
        return None
    return configured | {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}


def host_name(header: str) -> str:
    """`Host` without its port: `example.com:8000` -> `example.com`, `[::1]:8000` -> `[::1]`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.split("]")[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, allowed: set[str] | None) -> bool:
    name = host_name(header)
    if allowed is None or not name or _is_ip(name):
        return True
    return name in allowed or name.endswith(".localhost") or any(
        a.startswith("*.") and name.endswith(a[1:]) for a in allowed)


class HostCheckMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, renderers: ErrorRenderers) -> None:
        self.app = app
        self.allowed = allowed_host_names(settings)
        self.renderers = renderers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not host_allowed(header, self.allowed):
                error = APIError(403, f"Host '{host_name(header)}' is not allowed: add it to ALLOWED_HOSTS to reach "
                                 "this server by that name (protection against DNS rebinding).",
                                 type="permission_error", code="host_not_allowed")
                await self.renderers.render(scope["path"], error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
