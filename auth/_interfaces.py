"""
The seams between the guard, the credential factories and the checkers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.internet.defer import Deferred
from twisted.web.iweb import ICredentialFactory
from zope.interface import Attribute


class IChallenger(ICredentialFactory):
    """
    A credential factory that writes its own C{WWW-Authenticate} values
    (the stock guard quotes every field and allows one challenge a scheme).
    """

    def challenges(request: object, stale: bool) -> list[bytes]:
        """
        The C{WWW-Authenticate} values for a 401 to C{request}, best first;
        C{stale} says that the last Digest nonce was too old.
        """


class IDigestCredentials(ICredentials):
    """
    An HTTP Digest response, its nonce already found to be ours.
    """

    username = Attribute("The user name, as bytes (UTF-8).")
    algorithm = Attribute("C{MD5} or C{SHA-256}.")

    def check_ha1(ha1: str) -> bool:
        """
        Whether the response is right for the user's HA1 (hex), compared
        in constant time.
        """

    def accept_once() -> Deferred[None] | None:
        """
        Record this response's (nonce, nonce-count): at once (L{None}), or
        when a shared store answers (a Deferred that fails as below).

        @raise twisted.cred.error.LoginFailed: when it was seen before.
        @raise auth._errors.StaleNonce: when the nonce is too old.
        @raise app.sessions.backend.StoreUnavailable: when the shared store
            cannot be reached.
        """


class IClientCredentials(ICredentials):
    """
    Credentials that say which client address sent them, so that a checker
    can share its work fairly between clients.
    """

    client = Attribute(
        "The host of the request's peer (C{str}), or C{None} for a"
        " connection with no host (a UNIX socket, say)."
    )


class IImmediateChecker(ICredentialsChecker):
    """
    A credentials checker that can tell at once, without a Deferred, when
    it needs nothing to wait for (say, credentials it verified lately), so
    that the guard answers those requests synchronously.
    """

    def check(credentials: Any) -> object:
        """
        The avatar ID of C{credentials}: the ID itself when it is known at
        once, else a Deferred of it (as C{requestAvatarId} would return).

        @raise twisted.cred.error.UnauthorizedLogin: when refused at once.
        @raise auth._errors.HashPoolBusy: when the check cannot be queued.
        """

    def still_good(credentials: Any) -> Callable[[], bool] | None:
        """
        For credentials that C{check} just accepted at once: a test of
        whether the same credentials would still be accepted at once without
        being checked again (until the lifetime of a cached verification
        ends, say); C{None} where every request must be checked (Digest,
        whose every answer is used once).
        """
