"""
The guard of C{/private/}: twisted's C{HTTPAuthSessionWrapper}, made lean and
strict.

The stock wrapper answers its 401 with a page of its own, 500 for a
factory that fails in an unexpected way, builds a resource per request and a
class per login, and offers one challenge a scheme.  This one keeps its
Portal and credential factories and its way of working (decode the
C{Authorization} header with the factory of its scheme, log in through the
portal, render the avatar for the rest of the path, log out when the
response is finished), and answers:

  - 401 with the server's own page and every factory's challenges for no,
    wrong or malformed credentials (C{stale=true} for an old Digest nonce);
  - 503 with C{Retry-After} when the password-hashing pool is full.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.cred.credentials import ICredentials
from twisted.cred.error import LoginFailed, Unauthorized
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.guard import HTTPAuthSessionWrapper
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request

from app._http import request_uri
from app._pages import render_error
from auth._errors import HashPoolBusy, StaleNonce
from auth._interfaces import IChallenger

#: Seconds a client is asked to wait when the hashing pool is full.
RETRY_AFTER = b"1"

_Login = tuple[Any, IResource, Callable[[], None]]


class Guard(HTTPAuthSessionWrapper):
    """
    Guard every path below it with C{portal}, the credentials coming from
    the C{Authorization} header as decoded by C{factories}.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, portal: Portal, factories: Sequence[IChallenger]) -> None:
        super().__init__(portal, list(factories))
        self._factories = tuple(factories)
        self._by_scheme = {bytes(f.scheme).lower(): f for f in self._factories}

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        return self

    def render(self, request: Request) -> bytes | int:
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) != 1:
            return self._unauthorized(request)
        scheme, _, response = values[0].strip(b" \t").partition(b" ")
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
            self._log.failure("Decoding {scheme} credentials failed", scheme=scheme)
            return self._body(request, render_error(request, 500))

        gone: list[Failure] = []
        finished = request.notifyFinish()
        finished.addErrback(gone.append)
        login: Deferred[Any] = self._portal.login(credentials, None, IResource)
        login.addCallbacks(
            self._logged_in,
            self._refused,
            callbackArgs=(request, credentials, finished, gone),
            errbackArgs=(request, gone),
        )
        login.addErrback(self._failed, request)
        return NOT_DONE_YET

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
        request.remote_user = credentials.username.decode("utf-8")  # type: ignore[attr-defined]
        request.render(getChildForRequest(avatar, request))

    def _refused(self, failure: Failure, request: Request, gone: list[Failure]) -> None:
        if gone:
            return
        if failure.check(StaleNonce):
            body = self._unauthorized(request, stale=True)
        elif failure.check(LoginFailed, Unauthorized):
            body = self._unauthorized(request)
        elif failure.check(HashPoolBusy):
            body = self._body(request, render_error(request, 503))
            request.setHeader(b"retry-after", RETRY_AFTER)
        else:
            self._failed(failure, request)
            return
        request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        self._log.failure("Rendering {uri} failed", failure, uri=request_uri(request))
        if request.finished or getattr(request, "_disconnected", False):
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
