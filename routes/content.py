"""
The content chapters: static and dynamic pages, dispatch, error pages and
custom status codes, and form posts and other request bodies.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from functools import lru_cache
from html import escape

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from werkzeug.exceptions import BadRequest, NotFound

from app.http.pages import HOME_LINK, page
from app.http.router import new_app
from app.sessions import sessionless


@dataclass(frozen=True)
class Chapter:
    """
    One chapter of the series as the index shows it: its title, one line
    of HTML saying what it shows, and the pages it links, as (path, label).
    """

    title: str
    summary_html: str
    pages: tuple[tuple[str, str], ...] = ()


#: The chapters of Twisted Web in 60 seconds, in the series' order.
SERIES: tuple[Chapter, ...] = (
    Chapter(
        "Serving static content from a directory",
        "Files with ETag, Last-Modified and ranges.",
        (("/static/", "/static/"),),
    ),
    Chapter(
        "Generating a page dynamically",
        "A page rendered afresh on every request.",
        (("/clock", "/clock"),),
    ),
    Chapter(
        "Static URL dispatch",
        "Fixed paths, each answered by its own resource.",
        (("/health", "/health"),),
    ),
    Chapter(
        "Dynamic URL dispatch",
        "A resource made from the path itself: any year from 1 to 9999.",
        (("/calendar/2026", "/calendar/2026"),),
    ),
    Chapter(
        "Error handling",
        "A path nothing answers, such as <code>/calendar/0</code>, "
        "is a short 404 page.",
    ),
    Chapter(
        "Custom response codes",
        "402 Payment Required, with a page of its own.",
        (("/pay", "/pay"),),
    ),
    Chapter(
        "Handling POSTs",
        "A form whose field comes back, escaped.",
        (("/form", "/form"),),
    ),
    Chapter(
        "Other request bodies",
        "<code>/echo</code> answers a PUT, POST or PATCH with its body; "
        "try the form below.",
    ),
    Chapter(
        "Session basics",
        "A cookie names your session; expiring it starts a new one.",
        (("/session", "/session"), ("/session/expire", "/session/expire")),
    ),
    Chapter(
        "Storing objects in the session",
        "A visit counter kept in your session.",
        (("/counter", "/counter"),),
    ),
    Chapter(
        "Session endings",
        "When your session expires, the server's log says so.",
        (("/session/logme", "/session/logme"),),
    ),
    Chapter(
        "Asynchronous responses",
        "An answer that waits on a timer without holding up the server.",
        (("/delayed?seconds=1", "/delayed?seconds=1"),),
    ),
    Chapter(
        "Asynchronous responses (via Deferred)",
        "The same wait as Deferred callbacks, ending in a failure.",
        (("/delayed/fail?seconds=1", "/delayed/fail?seconds=1"),),
    ),
    Chapter(
        "Interoperability with WSGI",
        "A WSGI application mounted under the site.",
        (("/wsgi/", "/wsgi/"),),
    ),
    Chapter(
        "Logging errors",
        "The failure above is logged once, with its traceback.",
    ),
    Chapter(
        "Access logging",
        "<code>--access-log -</code> writes each request in Combined Log Format.",
    ),
    Chapter(
        "HTTP authentication with twisted.cred",
        "Basic or Digest login, then your own home directory.",
        (("/private/", "/private/"),),
    ),
    Chapter(
        "rpy scripts",
        "Their place is taken by <code>--routes MODULE</code>: "
        "Klein routes of your own beside these.",
    ),
)

#: What the server adds from the rest of twisted.web.
BEYOND_THE_SERIES: tuple[Chapter, ...] = (
    Chapter(
        "CGI",
        "Scripts run as processes: one shows its environment, one answers a form.",
        (
            ("/cgi-bin/env.py", "/cgi-bin/env.py"),
            ("/cgi-bin/hello.py", "/cgi-bin/hello.py"),
        ),
    ),
    Chapter(
        "Reverse proxy",
        "Another HTTP server mounted under the site: here, this one's /static/.",
        (("/proxy/", "/proxy/"),),
    ),
)

#: Every demo page, as (path, label); the index links to each.
DEMO_PAGES: tuple[tuple[str, str], ...] = tuple(
    link for chapter in SERIES + BEYOND_THE_SERIES for link in chapter.pages
)

#: The form of the index that sends a body to C{/echo}.
ECHO_FORM = (
    '<form method="POST" action="/echo" enctype="text/plain">\n'
    '<label for="echo-body">A body for /echo</label>\n'
    '<textarea id="echo-body" name="body" rows="2" cols="40">hello</textarea>\n'
    '<input type="submit" value="Send it">\n</form>\n'
    "<p>Or from a shell, with any method and type:</p>\n"
    "<pre>curl -X PUT -H 'Content-Type: application/json' "
    '-d \'{"hello": "world"}\' http://127.0.0.1:8080/echo</pre>'
)

#: The most years whose calendar is kept rendered.
CALENDAR_CACHE = 1024


class HealthRoutes:
    """
    C{/health}, served with or without the demo.
    """

    app = new_app()

    @sessionless
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
        self._index = page("Twisted Web in 60 seconds", index_html())
        self._calendar = lru_cache(maxsize=CALENDAR_CACHE)(_calendar_text)

    @sessionless
    @app.route("/", methods=["GET"])
    def index(self, request: IRequest) -> bytes:
        return self._index

    @sessionless
    @app.route("/clock", methods=["GET"])
    def clock(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        now = escape(time.ctime(self._clock.seconds()))
        return page("Clock", f"<h1>Clock</h1>\n<p>The time is {now}.</p>\n{HOME_LINK}")

    @sessionless
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
            "402 Payment Required",
            f"<h1>Payment Required</h1>\n<p>Please pay.</p>\n{HOME_LINK}",
        )

    @app.route("/form", methods=["GET"])
    def form(self, request: IRequest) -> bytes:
        return page(
            "Form",
            '<h1>Form</h1>\n<form method="POST" action="/form">\n'
            '<label for="the-field">Say something</label>\n'
            '<input id="the-field" name="the-field" type="text">\n'
            f'<input type="submit" value="Submit">\n</form>\n{HOME_LINK}',
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
        return page(
            "Form",
            f"<h1>Form</h1>\n<p>You submitted: {escape(value)}</p>\n"
            f'<p><a href="/form">Again</a></p>\n{HOME_LINK}',
        )

    @app.route("/echo", methods=["PUT", "POST", "PATCH"])
    def echo(self, request: IRequest) -> bytes:
        body = request.content.read() if request.content is not None else b""
        content_type = request.getHeader(b"content-type") or b"application/octet-stream"
        request.setHeader(b"content-type", content_type)
        # The body is the client's own: never let a browser run it as our page.
        request.setHeader(b"content-security-policy", b"sandbox")
        return body


def index_html() -> str:
    """
    The body of the index: each chapter in a line, with its pages' links.
    """
    return (
        "<h1>Twisted Web in 60 seconds</h1>\n"
        "<p>Every chapter of the series, served by one Klein site.</p>\n"
        f"<ol>\n{_chapters_html(SERIES)}\n</ol>\n"
        "<h2>Other request bodies: /echo</h2>\n"
        f"{ECHO_FORM}\n"
        "<h2>Beyond the series</h2>\n"
        f"<ul>\n{_chapters_html(BEYOND_THE_SERIES)}\n</ul>"
    )


def _chapters_html(chapters: tuple[Chapter, ...]) -> str:
    items = []
    for chapter in chapters:
        links = ", ".join(
            f'<a href="{escape(path)}">{escape(label)}</a>'
            for path, label in chapter.pages
        )
        line = f"<strong>{escape(chapter.title)}</strong>: {chapter.summary_html}"
        items.append(f"<li>{line} {links}</li>" if links else f"<li>{line}</li>")
    return "\n".join(items)


def _calendar_text(year: int) -> bytes:
    return calendar.calendar(year).encode("utf-8")
