"""
The guard and the Basic factory on their own: whatever the Authorization
header, the answer is a 401 with challenges (or a login attempt).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import LoginFailed
from twisted.cred.portal import IRealm, Portal
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from app.http.pages import ErrorResource
from app.http.request import Request
from auth import (
    BasicCredentialFactory,
    BcryptChecker,
    DigestCredentialFactory,
    Guard,
    HashPool,
    HomeRealm,
    IChallenger,
    IImmediateChecker,
    VerifiedCache,
    parse_htpasswd,
)
from tests.paths import TESTS

USERS = parse_htpasswd(TESTS / "data" / "auth" / "users.htpasswd")


def _guard() -> Guard:
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"wonderland")
    portal = Portal(HomeRealm(None), [checker])
    factories = [
        DigestCredentialFactory("app", b"k" * 32, Clock()),
        BasicCredentialFactory("app"),
    ]
    return Guard(portal, factories)


def _as_request(fake: DummyRequest) -> Request:
    # Twisted's DummyRequest stands in for a request without declaring it.
    return cast(Request, fake)


def _render(guard: Guard, authorization: bytes | None) -> DummyRequest:
    request = DummyRequest([b""])
    request.uri = b"/private/"
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization])
    body = guard.render(_as_request(request))
    if body is not NOT_DONE_YET:
        request.write(body)
        request.finish()
    return request


def test_basic_factory_provides_challenger() -> None:
    assert verifyObject(IChallenger, BasicCredentialFactory("app"))


def test_basic_decodes_user_and_password() -> None:
    credentials = BasicCredentialFactory("app").decode(
        base64.b64encode(b"alice:won:der"), _as_request(DummyRequest([b""]))
    )
    assert (credentials.username, credentials.password) == (b"alice", b"won:der")


@pytest.mark.parametrize(
    "response",
    [
        b"",
        b"!!!",
        base64.b64encode(b"alice"),
        base64.b64encode(b"alice:pw")[:-1],
        b"YWxp Y2U6cHc=",
        base64.b64encode(b"../x:pw"),
        base64.b64encode(b"\xff:pw"),
        b"A" * 10240,
    ],
)
def test_basic_refuses_malformed_responses(response: bytes) -> None:
    with pytest.raises(LoginFailed):
        BasicCredentialFactory("app").decode(response, _as_request(DummyRequest([b""])))


def test_guard_right_basic_credentials_reach_the_realm() -> None:
    request = _render(_guard(), b"Basic " + base64.b64encode(b"alice:wonderland"))
    # No homes: the avatar is the 404 page, reached only after logging in.
    assert request.responseCode == 404
    assert request.remote_user == "alice"  # type: ignore[attr-defined]


def test_guard_without_header_is_401_with_every_challenge() -> None:
    request = _render(_guard(), None)
    assert request.responseCode == 401
    challenges = request.responseHeaders.getRawHeaders(b"www-authenticate")
    assert challenges is not None
    assert [c.split(b" ")[0] for c in challenges] == [b"Digest", b"Basic"]


def test_realm_refuses_a_name_that_is_not_plain() -> None:
    realm = HomeRealm(None)
    with pytest.raises(LoginFailed):
        realm.requestAvatar(b"../bob", None, IResource)
    interface, avatar, _logout = realm.requestAvatar(b"bob", None, IResource)
    assert interface is IResource and isinstance(avatar, ErrorResource)


@given(st.binary(max_size=300))
def test_guard_answers_any_header_with_401(header: bytes) -> None:
    request = _render(_guard(), header)
    assert request.responseCode == 401
    assert request.responseHeaders.getRawHeaders(b"www-authenticate")


@given(st.sampled_from([b"Basic ", b"Digest ", b"basic ", b"DIGEST "]), st.binary())
def test_guard_answers_any_scheme_payload_with_401(
    scheme: bytes, payload: bytes
) -> None:
    request = _render(_guard(), scheme + payload)
    assert request.responseCode == 401


@given(st.binary(max_size=200))
def test_guard_answers_any_basic_credentials_with_401(credentials: bytes) -> None:
    request = _render(_guard(), b"Basic " + base64.b64encode(credentials))
    assert request.responseCode == 401 or credentials == b"alice:wonderland"


# -- answering at once ------------------------------------------------------------


def _cached_guard(clock: Clock) -> Guard:
    """
    A guard whose bcrypt checker remembers alice's password, its hashing
    pool not running: whatever is not answered from the cache is a 503.
    """
    cache = VerifiedCache(clock)
    cache.remember("alice", USERS["alice"], b"wonderland")
    checker = BcryptChecker(USERS, HashPool(IReactorFromThreads(reactor)), cache)
    return Guard(Portal(HomeRealm(None), [checker]), [BasicCredentialFactory("app")])


def _written(
    request: DummyRequest,
) -> tuple[int | None, list[tuple[bytes, Sequence[bytes]]], bytes]:
    headers = sorted(request.responseHeaders.getAllRawHeaders())
    return request.responseCode, headers, b"".join(request.written)


def test_cached_basic_credentials_are_answered_synchronously() -> None:
    request = DummyRequest([b""])
    request.requestHeaders.setRawHeaders(
        b"authorization", [b"Basic " + base64.b64encode(b"alice:wonderland")]
    )
    assert _cached_guard(Clock()).render(_as_request(request)) is NOT_DONE_YET
    # Finished before render returned: no Deferred was waited for.
    assert request.finished
    assert request.responseCode == 404  # the avatar: no homes
    assert request.remote_user == "alice"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "credentials", [b"alice:wonderland", b"alice:wonderland!", b"bob:wonderland"]
)
def test_answers_at_once_are_those_of_the_portal(
    credentials: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = b"Basic " + base64.b64encode(credentials)
    at_once = _render(_cached_guard(Clock()), header)
    monkeypatch.setattr(Guard, "_checker", lambda self, credentials: None)
    portal = _render(_cached_guard(Clock()), header)
    assert _written(at_once) == _written(portal)
    user = getattr(at_once, "remote_user", None)
    assert user == getattr(portal, "remote_user", None)


@pytest.mark.parametrize(
    "credentials", [b"alice:wonderland!", b"alice:wonderlan", b"bob:wonderland"]
)
def test_other_credentials_are_not_answered_from_the_cache(credentials: bytes) -> None:
    request = _render(_cached_guard(Clock()), b"Basic " + base64.b64encode(credentials))
    # Sent to bcrypt, whose pool is not running.
    assert request.responseCode == 503
    assert getattr(request, "remote_user", None) is None


def test_expired_credentials_are_not_answered_from_the_cache() -> None:
    clock = Clock()
    guard = _cached_guard(clock)
    header = b"Basic " + base64.b64encode(b"alice:wonderland")
    clock.advance(59)
    assert _render(guard, header).responseCode == 404
    clock.advance(1)
    assert _render(guard, header).responseCode == 503


class _Later(Resource):
    """
    An avatar that answers only when the test finishes its request.
    """

    isLeaf = True

    def render(self, request: DummyRequest) -> int:
        return NOT_DONE_YET


@implementer(IRealm)
class _CountingRealm:
    def __init__(self, avatar: IResource) -> None:
        self.avatar = avatar
        self.logouts = 0

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> Any:
        return IResource, self.avatar, self.logout

    def logout(self) -> None:
        self.logouts += 1


@implementer(IImmediateChecker)
class _AtOnce:
    credentialInterfaces = (IUsernamePassword,)

    def check(self, credentials: UsernamePassword) -> bytes:
        return bytes(credentials.username)

    def requestAvatarId(self, credentials: UsernamePassword) -> Any:
        raise AssertionError("asked at once, never through the portal")

    def still_good(self, credentials: UsernamePassword) -> None:
        return None


@pytest.mark.parametrize("avatar", [ErrorResource(404), _Later()])
def test_login_answered_at_once_logs_out_once_finished(avatar: IResource) -> None:
    realm = _CountingRealm(avatar)
    guard = Guard(Portal(realm, [_AtOnce()]), [BasicCredentialFactory("app")])
    request = DummyRequest([b""])
    request.requestHeaders.setRawHeaders(
        b"authorization", [b"Basic " + base64.b64encode(b"alice:x")]
    )
    assert guard.render(_as_request(request)) is NOT_DONE_YET
    assert realm.logouts == (1 if request.finished else 0)
    if not request.finished:
        request.finish()
    assert realm.logouts == 1
