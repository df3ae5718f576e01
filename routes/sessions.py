"""
The session chapters: session basics, storing objects in the session, and
session endings.
"""

from __future__ import annotations

from html import escape

from twisted.logger import Logger
from twisted.python.components import getAdapterFactory, registerAdapter
from twisted.web.iweb import IRequest
from twisted.web.server import Session
from zope.interface import Attribute, Interface, implementer

from app.http.pages import HOME_LINK, page
from app.http.router import new_app
from app.sessions.store import forget_session

log = Logger()


class ICounter(Interface):
    """
    How many times the owner of a session has visited the counter page.
    """

    value = Attribute("The number of visits so far (an int).")


@implementer(ICounter)
class Counter:
    """
    The visit count of one session, stored in it as its L{ICounter} adapter.
    """

    def __init__(self, session: Session) -> None:
        self.value = 0


def register_counter() -> None:
    """
    Make L{Counter} the L{ICounter} of every session, once: registering the
    same pair twice is an error in twisted's adapter registry.
    """
    if getAdapterFactory(Session, ICounter, None) is None:
        registerAdapter(Counter, Session, ICounter)


register_counter()


def session_page(uid_html: str) -> bytes:
    """
    The page of C{/session} showing a uid (already escaped).
    """
    return page(
        "Session",
        f"<h1>Session</h1>\n<p>Your session id is <code>{uid_html}</code>.</p>\n"
        '<form method="POST" action="/session/expire">'
        '<input type="submit" value="Expire it"></form>\n'
        f"{HOME_LINK}",
    )


#: The page of C{/session}, rendered once, around the place of the uid: the
#: uid is all that changes from one request to the next.
_SESSION_PAGE_HEAD, _SESSION_PAGE_TAIL = session_page("\0").split(b"\0")


class IExpiryLogged(Interface):
    """
    Whether an expiry logger was registered for a session (by whichever
    process: with a shared store, the callback stays in the process that
    registered it, and this mark, kept in the session, tells the others).
    """

    registered = Attribute("True once an ExpiryLogger is registered (a bool).")


@implementer(IExpiryLogged)
class ExpiryLogged:
    """
    The L{IExpiryLogged} mark of a session.
    """

    def __init__(self, session: Session) -> None:
        self.registered = False


def register_expiry_logged() -> None:
    """
    Make L{ExpiryLogged} the L{IExpiryLogged} of every session, once.
    """
    if getAdapterFactory(Session, IExpiryLogged, None) is None:
        registerAdapter(ExpiryLogged, Session, IExpiryLogged)


register_expiry_logged()


class ExpiryLogger:
    """
    An expiry callback that logs that a session expired.  It keeps the uid
    only, not the session or the request that registered it.
    """

    __slots__ = ("uid",)

    def __init__(self, uid: str) -> None:
        self.uid = uid

    def __call__(self) -> None:
        log.info("session expired: {uid}", uid=self.uid)


class SessionRoutes:
    """
    C{/session}, C{/session/expire}, C{/counter} and C{/session/logme}.
    """

    app = new_app()

    @app.route("/session", methods=["GET"])
    def session(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        uid: bytes = request.getSession().uid
        if not uid.isalnum():
            # The site's uids are hex; any other kind is shown escaped.
            uid = escape(uid.decode("ascii")).encode("ascii")
        return _SESSION_PAGE_HEAD + uid + _SESSION_PAGE_TAIL

    @app.route("/session/expire", methods=["GET", "POST"])
    def expire(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        if forget_session(request):
            text = "Your session has expired."
        else:
            text = "You had no session; there was nothing to expire."
        return page(
            "Session expired",
            f"<h1>Session expired</h1>\n<p>{text}</p>\n"
            f'<p><a href="/session">Start a new one</a></p>\n{HOME_LINK}',
        )

    @app.route("/counter", methods=["GET"])
    def counter(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        counter = ICounter(request.getSession())
        visit = counter.value + 1
        if request.method != b"HEAD":  # HEAD is safe: it shows, never counts
            counter.value = visit
        return page(
            "Counter",
            f"<h1>Counter</h1>\n<p>Visit #{visit:d} for you!</p>\n"
            "<p>The count is kept in your session: "
            '<a href="/counter">visit again</a>, or '
            '<a href="/session/expire">expire the session</a> to start over.</p>\n'
            f"{HOME_LINK}",
        )

    @app.route("/session/logme", methods=["GET"])
    def logme(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        session = request.getSession()
        logged = IExpiryLogged(session)
        if not logged.registered:
            session.notifyOnExpire(ExpiryLogger(session.uid.decode("ascii")))
            logged.registered = True
        return page(
            "Session endings",
            "<h1>Session endings</h1>\n"
            "<p>When your session expires, the server's log will say so.</p>\n"
            f"{HOME_LINK}",
        )
