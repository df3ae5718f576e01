"""
The guard of C{/private/}: twisted's C{HTTPAuthSessionWrapper}, made lean and
strict.

The stock wrapper answers its 401 with a page of its own, 500 for a
factory that fails in an unexpected way, builds a resource per request and a
class per login, and offers one challenge a scheme.  This one keeps its
Portal and credential factories and its way of working (decode the
C{Authorization} header with the factory of its scheme, log in through the
portal, render the avatar for the rest of the path, log out when the
response is finished).  A checker that can answer at once
(L{IImmediateChecker}: Digest, and Basic credentials verified lately) is
asked directly and the avatar rendered synchronously, with no Deferred on
the way; any other login goes through the portal and waits.  Both ways
answer the same.  It answers:

  - 401 with the server's own page and every factory's challenges for no,
    wrong or malformed credentials (C{stale=true} for an old Digest nonce);
  - 503 with C{Retry-After} when the password-hashing pool is full, or the
    client's address already holds its places in it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from twisted.cred.credentials import ICredentials
from twisted.cred.error import LoginFailed, Unauthorized
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.guard import HTTPAuthSessionWrapper
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request

from app.compat.twisted import connection_gone
from app.http.pages import render_busy, render_error
from app.http.request import request_uri
from app.sessions.backend import StoreUnavailable
from auth._errors import HashPoolBusy, StaleNonce
from auth._interfaces import IChallenger, IImmediateChecker

_Login = tuple[Any, IResource, Callable[[], None]]


@dataclass(frozen=True)
class _Remembered:
    """
    The last login a connection's C{Authorization} header made at once: the
    same header on the same connection is taken for the same avatar ID
    again, without decoding or checking, while the checker's C{still_good}
    holds (for Basic, while the verification it cached lasts); the realm is
    still asked for the avatar, and told of the logout, every time.
    """

    header: bytes
    credentials: ICredentials
    avatar_id: Any
    still_good: Callable[[], bool]


class Guard(HTTPAuthSessionWrapper):
    """
    Guard every path below it with C{portal}, the credentials coming from
    the C{Authorization} header as decoded by C{factories}.
    """

    isLeaf = True
    _logger = Logger()

    def __init__(self, portal: Portal, factories: Sequence[IChallenger]) -> None:
        super().__init__(portal, list(factories))
        # twisted.web's wrapper keeps the portal as a private attribute.  Any:
        # cred's realm types its avatar as object, where ours is an IResource.
        self._login_portal: Any = portal
        self._factories = tuple(factories)
        self._by_scheme = {bytes(f.scheme).lower(): f for f in self._factories}
        #: The last login of each open connection, so that a client repeating
        #: its Authorization header on the same connection is not checked
        #: again each time; forgotten with the connection.
        self._remembered: WeakKeyDictionary[Any, _Remembered] = WeakKeyDictionary()

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        return self

    def render(self, request: Request) -> bytes | int:
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) != 1:
            return self._unauthorized(request)
        header = values[0]
        channel: Any = getattr(request, "channel", None)
        remembered = None if channel is None else self._remembered.get(channel)
        if (
            remembered is not None
            and remembered.header == header
            and remembered.still_good()
        ):
            try:
                login = self._login_portal.realm.requestAvatar(
                    remembered.avatar_id, None, IResource
                )
            except Exception:
                self._refused(Failure(), request, [])
                return NOT_DONE_YET
            self._serve_now(request, remembered.credentials, login)
            return NOT_DONE_YET
        scheme, _, response = header.strip(b" \t").partition(b" ")
        factory = self._by_scheme.get(scheme.lower())
        if factory is None:
            return self._unauthorized(request)
        try:
            credentials = factory.decode(response, request)
        except StaleNonce:
            return self._unauthorized(request, stale=True)
        except LoginFailed:
            return self._unauthorized(request)
        except Exception:
            self._logger.failure("Decoding {scheme} credentials failed", scheme=scheme)
            return self._body(request, render_error(request, 500))

        checker = self._checker(credentials)
        try:
            login = self._log_in(checker, credentials)
        except Exception:
            # Answered as the portal's failed Deferred would be: 401, 503 or
            # a logged 500.
            self._refused(Failure(), request, [])
            return NOT_DONE_YET
        if isinstance(login, Deferred):
            self._wait(request, credentials, login)
            return NOT_DONE_YET
        assert checker is not None
        avatar_id, login = login
        still_good = checker.still_good(credentials)
        if still_good is not None and channel is not None:
            self._remembered[channel] = _Remembered(
                header, credentials, avatar_id, still_good
            )
        self._serve_now(request, credentials, login)
        return NOT_DONE_YET

    def _log_in(
        self, checker: IImmediateChecker | None, credentials: ICredentials
    ) -> tuple[Any, _Login] | Deferred[_Login]:
        """
        Log in as C{Portal.login} does, with the same checker and realm, but
        without Deferreds when the checker can answer at once: a client
        sending credentials verified lately is served synchronously (the
        avatar ID and the login are returned then).

        @raise Exception: what the checker or the realm refuses with at once.
        """
        portal = self._login_portal
        if checker is None:
            deferred: Deferred[_Login] = portal.login(credentials, None, IResource)
            return deferred
        found = checker.check(credentials)
        if isinstance(found, Deferred):
            return found.addCallback(portal.realm.requestAvatar, None, IResource)
        login: _Login = portal.realm.requestAvatar(found, None, IResource)
        return found, login

    def _checker(self, credentials: ICredentials) -> IImmediateChecker | None:
        """
        The checker that C{Portal.login} would give C{credentials} to (the
        first registered for an interface they provide) if it can answer at
        once; else C{None}, and the portal logs in.
        """
        for interface, checker in self._login_portal.checkers.items():
            if interface.providedBy(credentials):
                return checker if IImmediateChecker.providedBy(checker) else None
        return None

    def _wait(
        self, request: Request, credentials: ICredentials, login: Deferred[_Login]
    ) -> None:
        """
        Render the avatar once C{login} succeeds, unless the client has left.
        """
        gone: list[Failure] = []
        finished = request.notifyFinish()
        finished.addErrback(gone.append)
        login.addCallbacks(
            self._logged_in,
            self._refused,
            callbackArgs=(request, credentials, finished, gone),
            errbackArgs=(request, gone),
        )
        login.addErrback(self._failed, request)

    def _logged_in(
        self,
        result: _Login,
        request: Request,
        credentials: ICredentials,
        finished: Deferred[None],
        gone: list[Failure],
    ) -> None:
        _, avatar, logout = result
        finished.addBoth(lambda _: logout())
        if gone:
            return
        self._render_avatar(request, credentials, avatar)

    def _serve_now(
        self, request: Request, credentials: ICredentials, login: _Login
    ) -> None:
        """
        Render the avatar of a login that succeeded at once.
        """
        _, avatar, logout = login
        try:
            self._render_avatar(request, credentials, avatar)
        except Exception:
            self._failed(Failure(), request)
        if request.finished or connection_gone(request):
            # twisted.web's notifyFinish never fires once the request has
            # finished or its connection is gone: log out now.
            logout()
        else:
            request.notifyFinish().addBoth(lambda _: logout())

    @staticmethod
    def _render_avatar(
        request: Request, credentials: ICredentials, avatar: IResource
    ) -> None:
        request.remote_user = credentials.username.decode("utf-8")  # type: ignore[attr-defined]
        request.render(getChildForRequest(avatar, request))

    def _refused(self, failure: Failure, request: Request, gone: list[Failure]) -> None:
        if gone:
            return
        if failure.check(StaleNonce):
            body = self._unauthorized(request, stale=True)
        elif failure.check(LoginFailed, Unauthorized):
            body = self._unauthorized(request)
        elif failure.check(HashPoolBusy, StoreUnavailable):
            body = self._body(request, render_busy(request))
        else:
            self._failed(failure, request)
            return
        request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        self._logger.failure(
            "Rendering {uri} failed", failure, uri=request_uri(request)
        )
        if request.finished or connection_gone(request):
            return
        if request.startedWriting:
            request.loseConnection()
            return
        request.write(self._body(request, render_error(request, 500)))
        request.finish()

    def _unauthorized(self, request: Request, stale: bool = False) -> bytes:
        body = render_error(request, 401)
        headers = request.responseHeaders
        headers.removeHeader(b"www-authenticate")
        for factory in self._factories:
            for challenge in factory.challenges(request, stale):
                headers.addRawHeader(b"www-authenticate", challenge)
        return self._body(request, body)

    @staticmethod
    def _body(request: Request, body: bytes) -> bytes:
        # render_error set Content-Length; a HEAD gets the headers only.
        return b"" if request.method == b"HEAD" else body
