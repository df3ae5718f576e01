"""
A peer of `make bench`: aiohttp's hello, one process, default settings.

GET /health answers 200 text/plain "ok".  aiohttp keeps an access logger,
but with logging left unconfigured it formats no line (as the server under
test, which keeps no access log by default).
"""

from __future__ import annotations

from _listen import listening_socket
from aiohttp import web


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_get("/health", health)
    web.run_app(app, sock=listening_socket(), print=None)


if __name__ == "__main__":
    main()
