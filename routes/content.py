"""
The content chapters: static and dynamic pages, dispatch, error pages and
custom status codes, and form posts and other request bodies.
"""

from __future__ import annotations

import calendar
import time
from functools import lru_cache
from html import escape

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from werkzeug.exceptions import BadRequest, NotFound

from app.http.pages import page
from app.http.router import new_app

#: Every demo page, as (path, what it shows); the index links to each.
DEMO_PAGES: tuple[tuple[str, str], ...] = (
    ("/health", "Health check"),
    ("/clock", "A dynamic page: the server's clock"),
    ("/calendar/2026", "Dynamic dispatch: a calendar for any year"),
    ("/pay", "A custom status code: 402 Payment Required"),
    ("/form", "Handling a form post"),
    ("/delayed?seconds=1", "An asynchronous response"),
    ("/delayed/fail?seconds=1", "An asynchronous response that fails"),
    ("/static/", "Static files"),
    ("/wsgi/", "A WSGI application"),
    ("/cgi-bin/env.py", "A CGI script"),
    ("/cgi-bin/hello.py", "A CGI script handling a form"),
    ("/session", "Session basics"),
    ("/counter", "Storing objects in the session"),
    ("/session/logme", "Session endings"),
    ("/private/", "HTTP authentication and per-user homes"),
    ("/proxy/", "A reverse proxy"),
)

#: The most years whose calendar is kept rendered.
CALENDAR_CACHE = 1024


class HealthRoutes:
    """
    C{/health}, served with or without the demo.
    """

    app = new_app()

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok"


class ContentRoutes:
    """
    The demo's index and content pages.
    """

    app = new_app()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        links = "\n".join(
            f'<li><a href="{escape(path)}">{escape(title)}</a></li>'
            for path, title in DEMO_PAGES
        )
        self._index = page(
            "Twisted Web in 60 seconds",
            f"<h1>Twisted Web in 60 seconds</h1>\n<ul>\n{links}\n</ul>",
        )
        self._calendar = lru_cache(maxsize=CALENDAR_CACHE)(_calendar_text)

    @app.route("/", methods=["GET"])
    def index(self, request: IRequest) -> bytes:
        return self._index

    @app.route("/clock", methods=["GET"])
    def clock(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        now = escape(time.ctime(self._clock.seconds()))
        return page("Clock", f"<h1>Clock</h1>\n<p>The time is {now}.</p>")

    @app.route("/calendar/<int:year>", methods=["GET"])
    def calendar_page(self, request: IRequest, year: int) -> bytes:
        if not 1 <= year <= 9999:
            raise NotFound()
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self._calendar(year)

    @app.route("/pay", methods=["GET"])
    def pay(self, request: IRequest) -> bytes:
        request.setResponseCode(402)
        return page(
            "402 Payment Required", "<h1>Payment Required</h1>\n<p>Please pay.</p>"
        )

    @app.route("/form", methods=["GET"])
    def form(self, request: IRequest) -> bytes:
        return page(
            "Form",
            '<h1>Form</h1>\n<form method="POST" action="/form">\n'
            '<input name="the-field" type="text">\n'
            '<input type="submit" value="Submit">\n</form>',
        )

    @app.route("/form", methods=["POST"])
    def form_post(self, request: IRequest) -> bytes:
        values = (request.args or {}).get(b"the-field")
        if not values:
            raise BadRequest()
        try:
            value = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest() from None
        return page("Form", f"<p>You submitted: {escape(value)}</p>")

    @app.route("/echo", methods=["PUT", "POST", "PATCH"])
    def echo(self, request: IRequest) -> bytes:
        body = request.content.read() if request.content is not None else b""
        content_type = request.getHeader(b"content-type") or b"application/octet-stream"
        request.setHeader(b"content-type", content_type)
        # The body is the client's own: never let a browser run it as our page.
        request.setHeader(b"content-security-policy", b"sandbox")
        return body


def _calendar_text(year: int) -> bytes:
    return calendar.calendar(year).encode("utf-8")
