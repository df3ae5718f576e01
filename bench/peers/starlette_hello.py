"""
A peer of `make bench`: Starlette's hello on uvicorn, one worker, with
httptools and uvloop (what uvicorn[standard] brings) and the access log off
(uvicorn's --no-access-log), as the server under test keeps none by default.

GET /health answers 200 text/plain "ok".
"""

from __future__ import annotations

import uvicorn
from _listen import listening_socket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def main() -> None:
    app = Starlette(routes=[Route("/health", health)])
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", workers=1, access_log=False
    )
    uvicorn.Server(config).run(sockets=[listening_socket()])


if __name__ == "__main__":
    main()
