"""
The client and scheme behind a trusted proxy (C{--trusted-proxy}): the
forwarding headers read exactly, then the site in memory (StubTreq's peer is
127.0.0.1), then a chain of two real servers, the project's own proxy in
front of one that trusts it.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
from collections.abc import Sequence
from ipaddress import ip_address
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from klein import Klein
from klein.interfaces import IKleinRequest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from app.cli.options import config_from_args
from app.config import ConfigError
from app.http.forwarding import (
    MAX_HOPS,
    Forwarding,
    TrustedProxies,
    forwarding,
    trusted_network,
)
from app.site import build_site
from app.testing import LiveServer, stub_treq
from tests.app.mounts.test_wsgi import echo_app
from tests.conftest import fetch, header_of, listening_url, start_app, text_of

PEER = IPv4Address("TCP", "10.0.0.1", 40000)
#: The proxies in front: the peer's network and one more.
TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8:1::/48"])


def _forwarded(
    peer: IAddress = PEER, secure: bool = False, **fields: str | list[str]
) -> Forwarding:
    """
    What headers C{fields} (C{x_forwarded_for="…"}) from C{peer} say.
    """
    headers = Headers()
    for name, value in fields.items():
        values = [value] if isinstance(value, str) else value
        headers.setRawHeaders(name.replace("_", "-"), [v.encode() for v in values])
    return forwarding(headers, peer, secure, TRUSTED)


def _host(found: Forwarding) -> str:
    host = getattr(found.client, "host", None)
    assert isinstance(host, str)
    return host


# -- which address is the client ---------------------------------------------


def test_the_right_most_untrusted_address_is_the_client() -> None:
    found = _forwarded(x_forwarded_for="6.6.6.6, 192.0.2.7, 10.1.2.3")
    assert found.client == IPv4Address("TCP", "192.0.2.7", 0)


def test_every_line_of_x_forwarded_for_counts_in_order() -> None:
    found = _forwarded(x_forwarded_for=["6.6.6.6, 192.0.2.7", "10.1.2.3,"])
    assert _host(found) == "192.0.2.7"
    assert found.chain() == [b"6.6.6.6", b"192.0.2.7", b"10.1.2.3"]


def test_a_chain_of_trusted_addresses_gives_the_left_most() -> None:
    found = _forwarded(x_forwarded_for="10.9.9.9, 2001:db8:1::5, 10.1.2.3")
    assert _host(found) == "10.9.9.9"


def test_an_entry_that_is_not_an_address_ends_the_walk_at_its_writer() -> None:
    # 10.1.2.3, a trusted proxy, wrote "garbage" for its client: the client
    # is unknown, and the proxy is the best address there is.
    found = _forwarded(x_forwarded_for="192.0.2.7, garbage, 10.1.2.3")
    assert _host(found) == "10.1.2.3"
    assert found.chain() == [b"192.0.2.7", b"unknown", b"10.1.2.3"]


@pytest.mark.parametrize(
    "value",
    ["unknown", "_hidden", "300.1.1.1", "1.2.3.4.5", "01.2.3.4", "[1.2.3.4]", "::1]"],
)
def test_a_right_most_entry_that_is_not_an_address_leaves_the_peer(
    value: str,
) -> None:
    found = _forwarded(x_forwarded_for=f"192.0.2.7, {value}")
    assert found.client is PEER


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("192.0.2.7:4711", "192.0.2.7", 4711),
        ("[2001:db8::7]:4711", "2001:db8::7", 4711),
        ("[2001:db8::7]", "2001:db8::7", 0),
        ("2001:DB8:0::7", "2001:db8::7", 0),
        ("::ffff:192.0.2.7", "192.0.2.7", 0),
    ],
)
def test_ports_brackets_and_spellings(value: str, host: str, port: int) -> None:
    found = _forwarded(x_forwarded_for=value)
    assert _host(found) == host
    assert getattr(found.client, "port", None) == port


def test_an_ipv6_client_is_an_ipv6_address() -> None:
    found = _forwarded(x_forwarded_for="2001:db8::7")
    assert found.client == IPv6Address("TCP", "2001:db8::7", 0)


def test_only_the_right_most_hops_are_read() -> None:
    # A thousand trusted hops: the walk stops after MAX_HOPS of them.
    hops = ", ".join(f"10.0.{n // 250}.{n % 250 + 1}" for n in range(1000))
    found = _forwarded(x_forwarded_for=hops)
    chain = found.chain()
    assert len(chain) == MAX_HOPS + 1
    assert chain[0] == b"unknown"
    assert _host(found) == chain[1].decode()


# -- RFC 7239 Forwarded ------------------------------------------------------


def test_forwarded_for_with_quoted_bracketed_ipv6_and_port() -> None:
    found = _forwarded(
        forwarded="for=192.0.2.60;proto=http;by=203.0.113.43, "
        'For="[2001:db8:cafe::17]:4711"'
    )
    assert found.client == IPv6Address("TCP", "2001:db8:cafe::17", 4711)


def test_forwarded_elements_across_lines_and_its_proto() -> None:
    found = _forwarded(
        forwarded=["for=192.0.2.60;proto=https", 'for="10.1.2.3";proto=http']
    )
    assert _host(found) == "192.0.2.60"
    assert found.secure is True


@pytest.mark.parametrize(
    "value",
    [
        'for="_gazonk"',
        "for=unknown",
        "by=10.1.2.3",
        "for=192.0.2.60;for=192.0.2.61",
        'for="192.0.2.60',
        "for=192.0.2.60 junk",
        "for=192.0.2.60;;=x",
    ],
)
def test_a_forwarded_element_without_one_clear_address_is_unknown(value: str) -> None:
    found = _forwarded(forwarded=value)
    assert found.client is PEER


def test_a_malformed_forwarded_element_spoils_only_itself() -> None:
    found = _forwarded(forwarded='for="a,b";x, for=192.0.2.60, for=10.1.2.3')
    assert _host(found) == "192.0.2.60"


def test_x_forwarded_for_comes_before_forwarded() -> None:
    found = _forwarded(x_forwarded_for="192.0.2.7", forwarded="for=192.0.2.60")
    assert _host(found) == "192.0.2.7"


# -- the scheme --------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "secure"),
    [("https", True), ("HTTPS", True), ("http", False), (" https ", True)],
)
def test_x_forwarded_proto_gives_the_scheme(proto: str, secure: bool) -> None:
    found = _forwarded(
        secure=not secure, x_forwarded_for="192.0.2.7", x_forwarded_proto=proto
    )
    assert found.secure is secure


@pytest.mark.parametrize("proto", ["ftp", "", "https;x", "http s"])
def test_a_scheme_that_is_not_http_leaves_the_connections_own(proto: str) -> None:
    for secure in (False, True):
        found = _forwarded(
            secure=secure, x_forwarded_for="192.0.2.7", x_forwarded_proto=proto
        )
        assert found.secure is secure


def test_one_scheme_per_hop_gives_the_chosen_hops() -> None:
    found = _forwarded(
        x_forwarded_for="192.0.2.7, 10.1.2.3", x_forwarded_proto="https, http"
    )
    assert found.secure is True


def test_schemes_not_one_per_hop_give_the_right_most() -> None:
    found = _forwarded(
        x_forwarded_for="192.0.2.7, 10.1.2.3, 10.1.2.4",
        x_forwarded_proto="http, https",
    )
    assert found.secure is True


def test_a_scheme_alone_is_believed() -> None:
    found = _forwarded(x_forwarded_proto="https")
    assert found.client is PEER
    assert found.secure is True


# -- hostile headers ---------------------------------------------------------

#: Pieces of forwarding headers, good and bad, for values built of them.
_PIECES = [
    b"192.0.2.7",
    b"10.1.2.3",
    b"2001:db8::7",
    b"[2001:db8::7]",
    b":4711",
    b"01.2.3.4",
    b"unknown",
    b"_hidden",
    b"for=",
    b"proto=https",
    b"For",
    b'"',
    b"\\",
    b",",
    b";",
    b" ",
    b"=",
    b"\xff",
]
_VALUE = st.one_of(
    st.binary(max_size=200).filter(lambda v: b"\r" not in v and b"\n" not in v),
    st.lists(st.sampled_from(_PIECES), max_size=30).map(b"".join),
)


@given(xff=st.one_of(st.none(), _VALUE), fwd=st.one_of(st.none(), _VALUE))
def test_garbage_never_becomes_a_client_or_a_hop(
    xff: bytes | None, fwd: bytes | None
) -> None:
    headers = Headers()
    if xff is not None:
        headers.setRawHeaders(b"x-forwarded-for", [xff])
    if fwd is not None:
        headers.setRawHeaders(b"forwarded", [fwd])
    found = forwarding(headers, PEER, False, TRUSTED)
    if found.client is not PEER:
        assert str(ip_address(_host(found))) == _host(found)
    for hop in found.chain():
        assert hop == b"unknown" or ip_address(hop.decode())


# -- the trusted networks ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1/32"),
        ("::1", "::1/128"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("unix:", "unix:"),
    ],
)
def test_a_bare_address_is_a_network_of_one(text: str, canonical: str) -> None:
    assert trusted_network(text) == canonical


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("10.0.0.1/8", "host bits set (the network is 10.0.0.0/8)"),
        ("localhost", "expected an address or a network"),
        ("10.0.0.0/33", "expected an address or a network"),
        ("", "expected an address or a network"),
    ],
)
def test_a_bad_network_is_a_bad_option_value(text: str, said: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_args(["--trusted-proxy", text])
    assert raised.value.option == "--trusted-proxy"
    assert said in raised.value.message


def test_peers_trusted() -> None:
    trusted = TrustedProxies(["127.0.0.1/32", "2001:db8::/32"])
    assert trusted.trusts(IPv4Address("TCP", "127.0.0.1", 1))
    assert trusted.trusts(IPv6Address("TCP", "::ffff:127.0.0.1", 1))
    assert trusted.trusts(IPv6Address("TCP", "2001:db8::9", 1))
    assert not trusted.trusts(IPv4Address("TCP", "127.0.0.2", 1))
    assert not trusted.trusts(UNIXAddress(b"/run/app.sock"))
    assert TrustedProxies(["unix:"]).trusts(UNIXAddress(b"/run/app.sock"))
    assert TrustedProxies(["unix:"]).trusts(UNIXAddress(None))


# -- the site, in memory -----------------------------------------------------

#: A route that shows what the request says of its client and scheme.
_shows = Klein()


@_shows.route("/shown")
def _shown(request: IRequest) -> str:
    client = request.getClientAddress()
    return json.dumps(
        {
            "client": getattr(client, "host", None),
            "secure": request.isSecure(),
            "url": request.prePathURL().decode(),
            "external": IKleinRequest(request).url_for("_shown", force_external=True),
        }
    )


def _client(*args: str) -> StubTreq:
    config = dataclasses.replace(
        config_from_args(["--no-demo", *args]),
        route_apps=(_shows,),
        wsgi_app=echo_app,
    )
    return stub_treq(build_site(config, MemoryReactor(), Clock()))


_FORGED = {
    "X-Forwarded-For": ["192.0.2.7"],
    "X-Forwarded-Proto": ["https"],
}


def _shown_to(client: StubTreq, headers: dict[str, list[str]]) -> dict[str, Any]:
    response = fetch(client, "GET", "/shown", headers=headers)
    assert response.code == 200
    shown: dict[str, Any] = json.loads(text_of(response))
    return shown


def test_a_trusted_peer_names_the_client_and_scheme() -> None:
    shown = _shown_to(_client("--trusted-proxy", "127.0.0.1"), _FORGED)
    assert shown["client"] == "192.0.2.7"
    assert shown["secure"] is True
    # Absolute URLs the server builds take the client's scheme.
    assert shown["url"].startswith("https://example.invalid")


@pytest.mark.parametrize(
    ("headers", "url"),
    [
        # A proxy that terminates TLS on 443, and one on another port.
        ({}, "https://example.invalid/shown"),
        ({"X-Forwarded-Port": ["8443"]}, "https://example.invalid:8443/shown"),
        ({"Host": ["example.invalid:8443"]}, "https://example.invalid:8443/shown"),
        ({"Host": ["[2001:db8::1]:8443"]}, "https://[2001:db8::1]:8443/shown"),
        # One port a hop, the chosen hop's; what is not a port, nothing.
        (
            {
                "X-Forwarded-For": ["192.0.2.7, 127.0.0.1"],
                "X-Forwarded-Port": ["444, 8443"],
            },
            "https://example.invalid:444/shown",
        ),
        ({"X-Forwarded-Port": ["99999"]}, "https://example.invalid/shown"),
        ({"X-Forwarded-Port": ["0x50"]}, "https://example.invalid/shown"),
        (
            {"X-Forwarded-Proto": ["http"], "X-Forwarded-Port": ["8080"]},
            "http://example.invalid:8080/shown",
        ),
    ],
)
def test_urls_behind_a_trusted_peer_name_the_port_the_client_reached(
    headers: dict[str, list[str]], url: str
) -> None:
    shown = _shown_to(_client("--trusted-proxy", "127.0.0.1"), {**_FORGED, **headers})
    assert (shown["url"], shown["external"]) == (url, url)


@pytest.mark.parametrize(
    "args", [(), ("--trusted-proxy", "10.0.0.0/8"), ("--trusted-proxy", "::1")]
)
def test_other_peers_forwarding_headers_change_nothing(args: Sequence[str]) -> None:
    client = _client(*args)
    shown = _shown_to(client, _FORGED)
    assert shown == _shown_to(client, {})
    assert shown["client"] == "127.0.0.1"
    assert shown["secure"] is False
    assert shown["url"].startswith("http://example.invalid")
    assert _shown_to(client, {"X-Forwarded-Port": ["8443"]}) == shown


async def _gateway_variables(path: str, *args: str) -> dict[str, str]:
    """
    The variables that the demo site's CGI script (C{cgi-bin/env.py}) or
    the WSGI echo application get, from a live server, for a request with
    forged forwarding headers.
    """
    config = dataclasses.replace(config_from_args(list(args)), wsgi_app=echo_app)
    live = await LiveServer.start(config)
    try:
        response = await live.get(
            path, headers={**_FORGED, "X-Forwarded-Port": ["8443"]}
        )
        assert response.code == 200
        text = await response.text()
    finally:
        await live.stop()
    if path.startswith("/wsgi/"):
        environ: dict[str, str] = json.loads(text)["environ"]
        return environ
    return dict(line.partition("=")[::2] for line in text.splitlines())


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", ["/wsgi/", "/cgi-bin/env.py"])
async def test_gateways_get_the_forwarded_client_and_scheme(path: str) -> None:
    variables = await _gateway_variables(path, "--trusted-proxy", "127.0.0.0/8")
    assert variables["REMOTE_ADDR"] == "192.0.2.7"
    assert variables["HTTPS"] == "on"
    # The port the client reached the proxy on.
    assert variables["SERVER_PORT"] == "8443"
    if path == "/wsgi/":
        assert variables["wsgi.url_scheme"] == "https"
        # The proxy forwarded no port of the client's.
        assert "REMOTE_PORT" not in variables


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", ["/wsgi/", "/cgi-bin/env.py"])
async def test_gateways_behind_an_untrusted_peer_get_the_peer(path: str) -> None:
    variables = await _gateway_variables(path, "--trusted-proxy", "10.0.0.0/8")
    assert variables["REMOTE_ADDR"] == "127.0.0.1"
    assert variables["SERVER_PORT"] == variables["HTTP_HOST"].rpartition(":")[2]
    assert "HTTPS" not in variables
    if path == "/wsgi/":
        assert variables["wsgi.url_scheme"] == "http"
        assert int(variables["REMOTE_PORT"]) > 0


def _session_cookie(*args: str) -> bytes:
    client = stub_treq(
        build_site(config_from_args(list(args)), MemoryReactor(), Clock())
    )
    response = fetch(client, "GET", "/session", headers=_FORGED)
    assert response.code == 200
    cookie = header_of(response, b"set-cookie")
    assert cookie is not None
    return cookie


def test_the_session_cookie_of_a_forwarded_https_request_is_secure() -> None:
    cookie = _session_cookie("--trusted-proxy", "127.0.0.1")
    assert cookie.startswith(b"__Host-app_session=")
    assert b"; Secure" in cookie


def test_the_session_cookie_of_a_forged_https_request_is_not() -> None:
    cookie = _session_cookie("--trusted-proxy", "192.0.2.0/24")
    assert cookie.startswith(b"app_session=")
    assert b"Secure" not in cookie


# -- two real servers: the project's proxy in front of one that trusts it ----


def _get_from(source: str, port: int, target: bytes, headers: bytes = b"") -> bytes:
    """
    The answer to C{GET target} sent from the address C{source}.
    """
    with socket.create_connection(
        ("127.0.0.2", port), timeout=10, source_address=(source, 0)
    ) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: front.example\r\n"
            b"Connection: close\r\n" + headers + b"\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _lines_until(process: subprocess.Popen[str], text: str) -> list[str]:
    """
    The lines C{process} writes up to the first that holds C{text}.
    """
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no line with {text!r} in {lines}")


def test_behind_the_projects_own_proxy_the_backend_sees_the_real_client(
    spawn: list[subprocess.Popen[str]],
) -> None:
    # The backend on 127.0.0.3 trusts the loopback address the front's
    # connections come from; the client speaks from 127.0.0.5.
    backend = start_app(
        spawn,
        "--no-demo",
        "--listen",
        "tcp:0:interface=127.0.0.3",
        "--trusted-proxy",
        "127.0.0.1",
        "--trusted-proxy",
        "127.0.0.2",
        "--wsgi",
        "tests.app.mounts.test_wsgi:echo_app",
        "--access-log",
        "-",
    )
    backend_url = listening_url(backend)
    front = start_app(
        spawn,
        "--no-demo",
        "--listen",
        "tcp:0:interface=127.0.0.2",
        "--proxy",
        backend_url,
    )
    port = int(listening_url(front).rstrip("/").rsplit(":", 1)[1])
    forged = b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
    answer = _get_from("127.0.0.5", port, b"/proxy/wsgi/", forged)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    environ = json.loads(body)["environ"]
    assert environ["REMOTE_ADDR"] == "127.0.0.5"
    # The forged entry stays where the client put it, left of the address the
    # front proxy appended: the backend reads the right-most untrusted one.
    assert environ["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 127.0.0.5"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_X_FORWARDED_HOST"] == "front.example"
    assert backend.stdout is not None
    logged = [line for line in _lines_until(backend, '"GET /wsgi/ HTTP/1.1"')]
    assert logged[-1].startswith("127.0.0.5 - - ["), logged
