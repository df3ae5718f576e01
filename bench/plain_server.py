"""
The baseline of `make bench`: the smallest twisted.web server there is.

One Resource answering "ok", one Site, the same reactor as the server under
test; every ratio in the benchmark table is measured against this.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"ok"


class QuietSite(Site):
    """
    A stock Site, less the access log: the server under test keeps none by
    default either, and a stock Site formats a log line for every request.
    """

    def log(self, request: Request) -> None:
        pass


def main() -> None:
    site = QuietSite(Hello())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"listening on http://127.0.0.1:{port.getHost().port}/", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
