"""
The guard and the Basic factory on their own: whatever the Authorization
header, the answer is a 401 with challenges (or a login attempt).
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.error import LoginFailed
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from app._pages import ErrorResource
from auth import (
    BasicCredentialFactory,
    DigestCredentialFactory,
    Guard,
    HomeRealm,
    IChallenger,
)


def _guard() -> Guard:
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"wonderland")
    portal = Portal(HomeRealm(None), [checker])
    factories = [
        DigestCredentialFactory("app", b"k" * 32, Clock()),
        BasicCredentialFactory("app"),
    ]
    return Guard(portal, factories)


def _render(guard: Guard, authorization: bytes | None) -> DummyRequest:
    request = DummyRequest([b""])
    request.uri = b"/private/"
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization])
    body = guard.render(request)
    if body is not NOT_DONE_YET:
        request.write(body)
        request.finish()
    return request


def test_basic_factory_provides_challenger() -> None:
    assert verifyObject(IChallenger, BasicCredentialFactory("app"))


def test_basic_decodes_user_and_password() -> None:
    credentials = BasicCredentialFactory("app").decode(
        base64.b64encode(b"alice:won:der"), DummyRequest([b""])
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
        BasicCredentialFactory("app").decode(response, DummyRequest([b""]))


def test_guard_right_basic_credentials_reach_the_realm() -> None:
    request = _render(_guard(), b"Basic " + base64.b64encode(b"alice:wonderland"))
    # No homes: the avatar is the 404 page, reached only after logging in.
    assert request.responseCode == 404
    assert request.remote_user == "alice"  # type: ignore[attr-defined]


def test_guard_without_header_is_401_with_every_challenge() -> None:
    request = _render(_guard(), None)
    assert request.responseCode == 401
    challenges = request.responseHeaders.getRawHeaders(b"www-authenticate")
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
