"""
The guarded subtree: C{/private/} serves each user their own home, behind
HTTP Basic (C{--htpasswd}) and/or Digest (C{--htdigest}) authentication.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IServiceCollection
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from app.config import Config
from app.http.router import new_app
from app.mounts.static import StaticDirectory
from auth import (
    NONCE_LIFETIME,
    BasicCredentialFactory,
    BcryptChecker,
    Claims,
    DigestChecker,
    DigestCredentialFactory,
    Guard,
    HashPool,
    HomeRealm,
    IChallenger,
    SharedNonceCounts,
    VerifiedCache,
    parse_htdigest,
    parse_htpasswd,
)

#: Seconds a shared claim of a nonce count outlives the nonce.
CLAIM_MARGIN = 60


def build_guard(
    config: Config,
    reactor: Any,
    clock: IReactorTime,
    services: IServiceCollection,
    secret: bytes | None = None,
    claims: Claims | None = None,
) -> Guard | None:
    """
    The guard that C{config} asks for, built once; C{None} without password
    files.  Its hashing pool joins C{services}.

    @param secret: the key of Digest nonces (default: the configured one, or
        a random one).
    @param claims: the shared store in which Digest nonce counts are
        claimed, so that each is accepted once across processes and hosts.
    """
    if config.htpasswd is None and config.htdigest is None:
        return None
    factories: list[IChallenger] = []
    checkers: list[Any] = []
    if config.htdigest is not None:
        digest_users = parse_htdigest(config.htdigest, config.realm)
        every_sha256 = all(user.sha256 for user in digest_users.values())
        # curl and browsers answer the first challenge they can.
        algorithms = ("SHA-256", "MD5") if every_sha256 else ("MD5",)
        key = secret or config.secret_key or os.urandom(32)
        counts = (
            None
            if claims is None
            else SharedNonceCounts(claims, clock, NONCE_LIFETIME + CLAIM_MARGIN)
        )
        factories.append(
            DigestCredentialFactory(config.realm, key, clock, algorithms, counts=counts)
        )
        checkers.append(DigestChecker(digest_users))
    if config.htpasswd is not None:
        pool = HashPool(reactor)
        pool.setServiceParent(services)
        cache = VerifiedCache(clock)
        checkers.append(BcryptChecker(parse_htpasswd(config.htpasswd), pool, cache))
        factories.append(BasicCredentialFactory(config.realm))
    portal = Portal(HomeRealm(config.homes, StaticDirectory), checkers)
    return Guard(portal, factories)


class PrivateRoutes:
    """
    C{/private/…}: the guard, which renders the logged-in user's home.
    """

    #: Where it is served.
    PATH = "/private/"
    app = new_app()

    def __init__(self, guard: IResource) -> None:
        self._guard = guard

    @app.route(PATH, branch=True)
    def private(self, request: IRequest) -> IResource:
        return self._guard
