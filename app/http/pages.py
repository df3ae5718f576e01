"""
The server's own HTML: one page template, one error-page helper.

Every error the server answers (its routes, its mounts, its protocol limits)
goes through L{error_page}, so clients see one style and never a traceback
unless the operator asked for it.
"""

from __future__ import annotations

from html import escape
from http import HTTPStatus
from urllib.parse import quote

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

HTML_TYPE = b"text/html; charset=utf-8"

#: Characters left as they are when a path or query goes into a Location.
PATH_SAFE = "/:@!$&'()*+,;=-._~"

_DETAILS = {
    400: "The request could not be understood.",
    401: "You need to log in to see this page.",
    402: "Please pay.",
    403: "You may not see this page.",
    404: "There is nothing at this address.",
    405: "This address does not take that method.",
    408: "The request took too long to arrive.",
    413: "The request body is larger than this server accepts.",
    414: "The request line is longer than this server accepts.",
    416: "The requested range is not satisfiable.",
    431: "The request headers are larger than this server accepts.",
    500: "The server failed to answer this request.",
    501: "This server does not know that method.",
    502: "The upstream server could not be reached.",
    503: "The server is busy; try again shortly.",
    504: "The upstream server did not answer in time.",
    505: "This server speaks HTTP/1.0 and HTTP/1.1.",
}


#: The way back from an error page.
HOME_LINK = '<nav><a href="/">Home</a></nav>'


def reason(code: int) -> str:
    """
    The standard reason phrase for C{code}.
    """
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown Status"


#: The one stylesheet of every page the server renders.  It is inlined, not
#: linked: an error page (a 503 when the server is busy, a 404 under
#: C{--no-demo} or another C{--static}) must not need a second request.
STYLESHEET = (
    "body{font-family:system-ui,sans-serif;max-width:42em;margin:2em auto;"
    "padding:0 1em;line-height:1.5;color:#222;background:#fcfcfa}"
    "h1{font-size:1.6em;margin:0 0 .5em}h2{font-size:1.15em;margin:1.5em 0 .3em}"
    "a{color:#0b5cad}code,pre{background:#eef;padding:0 .2em}"
    "pre{padding:.5em;overflow-x:auto}ul{padding-left:1.2em}"
    "label{display:block;margin:.5em 0}input,textarea{font:inherit}"
    "nav{margin-top:2em;padding-top:.5em;border-top:1px solid #ddd}"
)
#: The icon a browser would otherwise ask every page for at C{/favicon.ico}.
_NO_ICON = '<link rel="icon" href="data:,">'


def page(title: str, body_html: str) -> bytes:
    """
    A complete HTML document; C{title} is escaped, C{body_html} is not.
    """
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>{_NO_ICON}<style>{STYLESHEET}</style>"
        f"</head>\n<body>\n{body_html}\n</body></html>\n"
    ).encode()


def error_page(code: int, detail: str | None = None, extra_html: str = "") -> bytes:
    """
    The body of the error page for C{code}; C{detail} is plain text.
    """
    title = f"{code} {reason(code)}"
    text = detail if detail is not None else _DETAILS.get(code, reason(code))
    return page(
        title,
        f"<h1>{escape(title)}</h1>\n<p>{escape(text)}</p>{extra_html}\n{HOME_LINK}",
    )


def render_error(request: IRequest, code: int, detail: str | None = None) -> bytes:
    """
    Set up C{request} for the error page of C{code} and return its body,
    ready to be returned from C{render} or written.
    """
    body = error_page(code, detail)
    request.setResponseCode(code)
    request.setHeader(b"content-type", HTML_TYPE)
    request.setHeader(b"content-length", b"%d" % (len(body),))
    return body


#: Seconds a client is told to wait before it tries a busy server again.
RETRY_AFTER = 1


def render_busy(request: IRequest) -> bytes:
    """
    Set up C{request} for the 503 page of a server too busy to take it now,
    with C{Retry-After}; return its body.
    """
    body = render_error(request, 503)
    request.setHeader(b"retry-after", b"%d" % (RETRY_AFTER,))
    return body


#: How long a redirect of the server's own may be reused: its target follows
#: from the routes and the files served, which rarely move.
REDIRECT_CACHE_CONTROL = b"max-age=300"


def redirect(request: IRequest, path: str) -> bytes | None:
    """
    Set up C{request} as a redirect to C{path} (absolute, already quoted)
    with the request's own query string: 301 for GET and HEAD, 308 for other
    methods, so that a body is never turned into a GET.  Return the page, or
    C{None} when such a Location would lead off this host (C{//} or C{/\\}).
    """
    if path.startswith(("//", "/\\")) or not path.startswith("/"):
        return None
    location = path.encode("ascii")
    query = bytes(request.uri).partition(b"?")[2]
    if query:
        location += b"?" + quote(query, safe=PATH_SAFE + "?%").encode("ascii")
    request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
    request.setHeader(b"location", location)
    request.setHeader(b"content-type", HTML_TYPE)
    request.setHeader(b"cache-control", REDIRECT_CACHE_CONTROL)
    target = escape(location.decode("ascii"))
    return page("Moved", f'<p>This page is at <a href="{target}">{target}</a>.</p>')


def answer(request: IRequest, body: bytes) -> int:
    """
    Write C{body} (headers only for a HEAD, with the length a GET would
    have) and finish C{request}.  Returning a body from C{render} instead
    makes twisted.web log a warning for every HEAD that it has to drop.
    """
    request.setHeader(b"content-length", b"%d" % (len(body),))
    request.write(b"" if request.method == b"HEAD" else body)
    request.finish()
    return NOT_DONE_YET


@implementer(IResource)
class ErrorResource:
    """
    A leaf resource that answers every request with one error page; mounts
    return it for what they refuse (for example a traversal attempt).
    """

    isLeaf = True

    def __init__(self, code: int, detail: str | None = None) -> None:
        self.code = code
        self.detail = detail

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("an error page has no children")

    def render(self, request: IRequest) -> bytes | int:
        body = render_error(request, self.code, self.detail)
        return body if request.method != b"HEAD" else answer(request, body)
