"""
HTTP Digest: the credential factory, its nonces, the counts it remembers,
and the parsing of hostile responses.
"""

from __future__ import annotations

import hashlib
import re
import tracemalloc
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.cred.error import LoginFailed
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from auth import (
    DigestChecker,
    DigestCredentialFactory,
    DigestUser,
    IChallenger,
    IDigestCredentials,
    NonceCounts,
    StaleNonce,
)
from auth._digest import MAX_COUNTS, MAX_NONCES, parse_parameters
from auth._htdigest import ha1

_CHALLENGE_FIELD = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]+))')


def challenge_fields(challenge: str | bytes) -> dict[str, str]:
    """
    The fields of one C{WWW-Authenticate: Digest ...} value.
    """
    if isinstance(challenge, bytes):
        challenge = challenge.decode("latin-1")
    assert challenge.startswith("Digest ")
    return {
        name: quoted or token
        for name, quoted, token in _CHALLENGE_FIELD.findall(challenge[7:])
    }


def digest_authorization(
    challenge: str | bytes,
    method: str,
    uri: str,
    user: str,
    password: str,
    *,
    nc: int = 1,
    cnonce: str = "0a4f113b",
    realm: str | None = None,
) -> str:
    """
    The C{Authorization} value answering C{challenge}, as a client computes
    it (RFC 7616, qop=auth).
    """
    fields = challenge_fields(challenge)
    algorithm = fields.get("algorithm", "MD5")
    hasher = hashlib.sha256 if algorithm == "SHA-256" else hashlib.md5

    def h(text: str) -> str:
        return hasher(text.encode()).hexdigest()

    realm = fields["realm"] if realm is None else realm
    secret = h(f"{user}:{realm}:{password}")
    count = f"{nc:08x}"
    response = h(
        f"{secret}:{fields['nonce']}:{count}:{cnonce}:auth:{h(f'{method}:{uri}')}"
    )
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{fields["nonce"]}", '
        f'uri="{uri}", algorithm={algorithm}, qop=auth, nc={count}, '
        f'cnonce="{cnonce}", response="{response}"'
    )


def _request(uri: bytes = b"/private/", method: bytes = b"GET") -> IRequest:
    request = DummyRequest(uri.lstrip(b"/").split(b"/"))
    request.uri = uri
    request.method = method
    # Twisted's DummyRequest stands in for an IRequest without declaring it.
    return cast(IRequest, request)


def _factory(
    clock: Clock | None = None, algorithms: tuple[str, ...] = ("MD5",)
) -> DigestCredentialFactory:
    return DigestCredentialFactory(
        "app", b"k" * 32, clock or Clock(), algorithms=algorithms
    )


USERS = {
    "alice": DigestUser(
        ha1("MD5", "alice", "app", b"wonderland"),
        ha1("SHA-256", "alice", "app", b"wonderland"),
    )
}


def _login(
    factory: DigestCredentialFactory, header: str, request: IRequest
) -> Deferred[bytes | tuple[()]]:
    credentials = factory.decode(header.partition(" ")[2].encode("latin-1"), request)
    return DigestChecker(USERS).requestAvatarId(credentials)


def _refusal(login: Deferred[bytes | tuple[()]]) -> Failure:
    """
    The failure a login has already been refused with.
    """
    assert isinstance(login.result, Failure)
    return login.result


# -- the factory ----------------------------------------------------------------


def test_factory_provides_challenger() -> None:
    assert verifyObject(IChallenger, _factory())


def test_challenge_offers_algorithms_in_order() -> None:
    challenges = _factory(algorithms=("SHA-256", "MD5")).challenges(_request(), False)
    assert [challenge_fields(c)["algorithm"] for c in challenges] == ["SHA-256", "MD5"]
    assert all(b'realm="app", qop="auth"' in c for c in challenges)
    assert all(b"stale" not in c for c in challenges)


def test_stale_challenge_says_so() -> None:
    (challenge,) = _factory().challenges(_request(), True)
    assert challenge.endswith(b", stale=true")


def test_nonces_are_unique() -> None:
    factory = _factory()
    assert len({factory.new_nonce() for _ in range(100)}) == 100


def test_credentials_provide_interface() -> None:
    factory = _factory()
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    credentials = factory.decode(header[7:].encode(), _request())
    assert verifyObject(IDigestCredentials, credentials)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_right_password_logs_in(algorithm: str) -> None:
    factory = _factory(algorithms=(algorithm,))
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    assert _login(factory, header, _request()).result == b"alice"


def test_wrong_password_is_refused() -> None:
    factory = _factory()
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "nope")
    failure = _refusal(_login(factory, header, _request()))
    assert failure.check(LoginFailed)
    failure.trap(LoginFailed)


def test_unknown_user_is_refused() -> None:
    factory = _factory()
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/", "mallory", "x")
    result = _refusal(_login(factory, header, _request()))
    assert result.check(LoginFailed)
    result.trap(LoginFailed)


def test_sha256_for_user_without_sha256_line_is_refused() -> None:
    users = {"bob": DigestUser(ha1("MD5", "bob", "app", b"builder"))}
    factory = _factory(algorithms=("SHA-256",))
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/", "bob", "builder")
    credentials = factory.decode(header[7:].encode(), _request())
    result = _refusal(DigestChecker(users).requestAvatarId(credentials))
    assert result.check(LoginFailed)
    result.trap(LoginFailed)


def test_replayed_nonce_count_is_refused() -> None:
    factory = _factory()
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    assert _login(factory, header, _request()).result == b"alice"
    replay = _refusal(_login(factory, header, _request()))
    assert replay.check(LoginFailed) and not replay.check(StaleNonce)
    replay.trap(LoginFailed)


def test_counts_may_arrive_out_of_order() -> None:
    factory = _factory()
    (challenge,) = factory.challenges(_request(), False)
    for nc in (3, 1, 2):
        header = digest_authorization(
            challenge, "GET", "/private/", "alice", "wonderland", nc=nc
        )
        assert _login(factory, header, _request()).result == b"alice"


def test_expired_nonce_with_right_password_is_stale() -> None:
    clock = Clock()
    factory = _factory(clock)
    (challenge,) = factory.challenges(_request(), False)
    clock.advance(301)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    result = _refusal(_login(factory, header, _request()))
    assert result.check(StaleNonce)
    result.trap(StaleNonce)


def test_nonce_is_good_for_300_seconds() -> None:
    clock = Clock()
    factory = _factory(clock)
    (challenge,) = factory.challenges(_request(), False)
    clock.advance(300)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    assert _login(factory, header, _request()).result == b"alice"


def test_expired_nonce_with_wrong_password_is_not_stale() -> None:
    clock = Clock()
    factory = _factory(clock)
    (challenge,) = factory.challenges(_request(), False)
    clock.advance(301)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wrong")
    result = _refusal(_login(factory, header, _request()))
    assert result.check(LoginFailed) and not result.check(StaleNonce)
    result.trap(LoginFailed)


def test_a_nonce_used_before_still_expires() -> None:
    clock = Clock()
    factory = _factory(clock)
    (challenge,) = factory.challenges(_request(), False)
    for count in (1, 2):
        header = digest_authorization(
            challenge, "GET", "/private/", "alice", "wonderland", nc=count
        )
        assert _login(factory, header, _request()).result == b"alice"
    clock.advance(301)
    header = digest_authorization(
        challenge, "GET", "/private/", "alice", "wonderland", nc=3
    )
    result = _refusal(_login(factory, header, _request()))
    assert result.check(StaleNonce)
    result.trap(StaleNonce)


def test_a_nonce_used_before_is_refused_once_altered() -> None:
    factory = _factory()
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    assert _login(factory, header, _request()).result == b"alice"
    nonce = challenge_fields(challenge)["nonce"]
    altered = nonce[:-1] + ("0" if nonce[-1] != "0" else "1")
    forged = challenge.decode().replace(nonce, altered)
    header = digest_authorization(
        forged, "GET", "/private/", "alice", "wonderland", nc=2
    )
    with pytest.raises(LoginFailed):
        factory.decode(header[7:].encode(), _request())


def test_nonces_checked_are_remembered_boundedly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("auth._digest.MAX_NONCES", 3)
    factory = _factory()
    for _ in range(10):
        (challenge,) = factory.challenges(_request(), False)
        header = digest_authorization(
            challenge, "GET", "/private/", "alice", "wonderland"
        )
        assert _login(factory, header, _request()).result == b"alice"
    assert len(factory._ours) == 3


def test_nonce_of_another_key_is_refused() -> None:
    (challenge,) = DigestCredentialFactory("app", b"x" * 32, Clock()).challenges(
        _request(), False
    )
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    with pytest.raises(LoginFailed):
        _factory().decode(header[7:].encode(), _request())


def test_workers_sharing_a_key_accept_each_others_nonces() -> None:
    clock = Clock()
    (challenge,) = _factory(clock).challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    assert _login(_factory(clock), header, _request()).result == b"alice"


def test_nonce_from_the_future_is_refused() -> None:
    clock = Clock()
    clock.advance(1000)
    (challenge,) = _factory(clock).challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    with pytest.raises(LoginFailed):
        _factory(Clock()).decode(header[7:].encode(), _request())


def test_digest_for_another_uri_is_refused() -> None:
    factory = _factory()
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(challenge, "GET", "/private/a", "alice", "wonderland")
    with pytest.raises(LoginFailed):
        factory.decode(header[7:].encode(), _request(b"/private/b"))


def test_digest_for_another_realm_is_refused() -> None:
    factory = _factory()
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(
        challenge, "GET", "/private/", "alice", "elsewhere", realm="other"
    )
    with pytest.raises(LoginFailed):
        factory.decode(header[7:].encode(), _request())


def test_digest_for_another_method_is_refused() -> None:
    factory = _factory()
    (challenge,) = factory.challenges(_request(), False)
    header = digest_authorization(challenge, "POST", "/private/", "alice", "wonderland")
    result = _refusal(_login(factory, header, _request(method=b"GET")))
    assert result.check(LoginFailed)
    result.trap(LoginFailed)


# -- what is remembered of the counts --------------------------------------------


def test_counts_forget_least_recently_used_nonce() -> None:
    counts = NonceCounts(max_nonces=2)
    counts.accept("a", 10, 1)
    counts.accept("b", 11, 1)
    counts.accept("c", 12, 1)
    assert len(counts) == 2


def test_forgotten_nonce_cannot_be_replayed() -> None:
    counts = NonceCounts(max_nonces=1)
    counts.accept("a", 10, 1)
    counts.accept("b", 11, 1)
    with pytest.raises(StaleNonce):
        counts.accept("a", 10, 1)


def test_nonce_issued_before_a_forgotten_one_is_stale() -> None:
    counts = NonceCounts(max_nonces=1)
    counts.accept("a", 10, 1)
    counts.accept("b", 11, 1)
    with pytest.raises(StaleNonce):
        counts.accept("never-seen", 9, 1)


def test_counts_out_of_order_per_nonce_are_bounded() -> None:
    counts = NonceCounts(max_counts=3)
    for count in (2, 3):
        counts.accept("a", 10, count)
    with pytest.raises(StaleNonce):
        counts.accept("a", 10, 4)
    counts.accept("a", 10, 1)
    counts.accept("a", 10, 6)


def test_counts_arriving_in_order_never_run_out() -> None:
    counts = NonceCounts(max_counts=3)
    for count in range(1, 5000):
        counts.accept("a", 10, count)
    with pytest.raises(LoginFailed):
        counts.accept("a", 10, 4321)


def test_a_gap_filled_late_frees_its_room() -> None:
    counts = NonceCounts(max_counts=4)
    for count in (2, 3, 4, 1, 6, 7, 8):
        counts.accept("a", 10, count)
    for count in (1, 4, 8):
        with pytest.raises(LoginFailed):
            counts.accept("a", 10, count)
    counts.accept("a", 10, 5)


def test_count_zero_is_refused() -> None:
    # RFC 7616: the first request with a nonce sends nc=00000001.
    with pytest.raises(LoginFailed):
        NonceCounts().accept("a", 10, 0)


def test_counts_remembered_at_most_take_a_few_megabytes() -> None:
    # Any user who can log in can fill every nonce with counts out of order.
    counts = NonceCounts()
    tracemalloc.start()
    try:
        for nonce in range(MAX_NONCES):
            # The farthest count allowed makes the record of a nonce its largest.
            for count in (2, MAX_COUNTS):
                counts.accept(f"{nonce:064x}", 10 + nonce, count)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(counts) == MAX_NONCES
    assert size < 4 * 1024 * 1024


# -- hostile responses -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "username",
        "username=",
        'username="alice',
        'username="a", username="a"',
        'Username="a", username="a"',
        "username=a b=c",
        "=x",
        'a="x"junk',
        "a=x,,b=y",
    ],
)
def test_malformed_parameters_are_refused(text: str) -> None:
    with pytest.raises(LoginFailed):
        parse_parameters(text)


def test_parameters_are_unquoted() -> None:
    assert parse_parameters(r'a="x\"y", B=tok') == {"a": 'x"y', "b": "tok"}


_VALID_FIELDS = {
    "username": '"alice"',
    "realm": '"app"',
    "nonce": '"%s"',
    "uri": '"/private/"',
    "response": '"%s"' % ("0" * 32),
    "qop": "auth",
    "nc": "00000001",
    "cnonce": '"abc"',
}


@pytest.mark.parametrize("missing", sorted(_VALID_FIELDS))
def test_each_missing_field_is_refused(missing: str) -> None:
    factory = _factory()
    fields = dict(_VALID_FIELDS, nonce=f'"{factory.new_nonce()}"')
    del fields[missing]
    text = ", ".join(f"{name}={value}" for name, value in fields.items())
    with pytest.raises(LoginFailed):
        factory.decode(text.encode(), _request())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", '".."'),
        ("username", '"a/b"'),
        ("username", '".alice"'),
        ("username", '"a\x00b"'),
        ("username", '""'),
        ("username", '"\xe9"'),
        ("qop", "auth-int"),
        ("algorithm", "SHA-1"),
        ("algorithm", "MD5-sess"),
        ("nc", "1"),
        ("nc", "zzzzzzzz"),
        ("response", '"xyz"'),
        ("nonce", '"deadbeef"'),
        ("cnonce", '""'),
        ("userhash", "true"),
    ],
)
def test_bad_field_is_refused(field: str, value: str) -> None:
    factory = _factory()
    fields = dict(_VALID_FIELDS, nonce=f'"{factory.new_nonce()}"')
    fields[field] = value
    text = ", ".join(f"{name}={v}" for name, v in fields.items())
    with pytest.raises(LoginFailed):
        factory.decode(text.encode("latin-1"), _request())


def test_long_response_is_refused() -> None:
    with pytest.raises(LoginFailed):
        _factory().decode(b"username=" + b"a" * 10240, _request())


@given(st.binary(max_size=600))
def test_decode_of_any_bytes_only_refuses(data: bytes) -> None:
    try:
        _factory().decode(data, _request())
    except LoginFailed:
        pass


_name = st.sampled_from(
    ["username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce", "x"]
)
_value = st.one_of(
    st.text(st.characters(max_codepoint=255), max_size=40).map(
        lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ),
    st.from_regex(r"[A-Za-z0-9-]{0,12}", fullmatch=True),
)


@given(st.lists(st.tuples(_name, _value), max_size=10))
def test_decode_of_parameter_lists_only_refuses(pairs: list[tuple[str, str]]) -> None:
    text = ", ".join(f"{name}={value}" for name, value in pairs)
    try:
        _factory().decode(text.encode("latin-1"), _request())
    except LoginFailed:
        pass


def test_non_ascii_realm_logs_in() -> None:
    realm = "caf\xe9"
    users = {"alice": DigestUser(ha1("MD5", "alice", realm, b"pw"))}
    factory = DigestCredentialFactory(realm, b"k" * 32, Clock())
    (challenge,) = factory.challenges(_request(), False)
    assert challenge_fields(challenge)["realm"].encode("latin-1") == realm.encode()
    header = digest_authorization(
        challenge, "GET", "/private/", "alice", "pw", realm=realm
    ).encode("utf-8")
    credentials = factory.decode(header[7:], _request())
    assert DigestChecker(users).requestAvatarId(credentials).result == b"alice"
