"""The explorer's HTTP guard: a Host allow-list (against DNS rebinding) and security headers on every
response, as one pure ASGI middleware.

A browser page on another site can point a DNS name at 127.0.0.1 and then call the explorer as if it
were its own origin; such requests carry that foreign name in ``Host``, so only the loopback names, the
address the server is bound to and names given with ``--allow-host`` are answered. Every response gets
``nosniff``, a Content-Security-Policy that lets the built front end (its own scripts, blob workers of
MapLibre, the optional OpenStreetMap base map) run and nothing else, no framing and no referrer.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "0.0.0.0", "::")
BASEMAP_ORIGIN = "https://tile.openstreetmap.org"  # ui/src/map.js BASEMAP_URL

_COMMON = ["frame-ancestors 'none'", "base-uri 'none'", "object-src 'none'", "form-action 'none'"]
UI_CSP = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "worker-src 'self' blob:",
    "child-src blob:", f"img-src 'self' data: blob: {BASEMAP_ORIGIN}", f"connect-src 'self' {BASEMAP_ORIGIN}",
    *_COMMON,
])
# FastAPI's /docs and /redoc pages are inline scripts loading Swagger UI / ReDoc from a CDN.
DOCS_PATHS = ("/docs", "/redoc")
DOCS_CSP = "; ".join([
    "default-src 'self'", "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net",
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com",
    "font-src https://fonts.gstatic.com", "img-src 'self' data: https://fastapi.tiangolo.com",
    "worker-src 'self' blob:", *_COMMON,
])
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def host_name(value: str) -> str:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Loopback names, the bound address (unless a wildcard) and the ``--allow-host`` names."""
    hosts = set(LOOPBACK_HOSTS) | {host_name(h) for h in extra if h and h.strip()}
    if bind_host not in WILDCARD_BINDS:
        hosts.add(host_name(bind_host))
    return frozenset(hosts)


class ExplorerGuard:
    """ASGI middleware: 400 for a ``Host`` outside ``hosts``; security headers on every response."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        csp = DOCS_CSP if path.startswith(DOCS_PATHS) else UI_CSP

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("Content-Security-Policy", csp)
            await send(message)

        if host_name(Headers(scope=scope).get("host", "")) not in self.hosts:
            response = PlainTextResponse(
                "Host not allowed: the explorer answers only to its own names; start it with "
                "--allow-host NAME to serve it under another one.", status_code=400)
            await response(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)
