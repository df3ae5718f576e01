"""
The client behind a trusted reverse proxy (SPEC §13, C{--trusted-proxy}).

twisted.web has a request of this kind (C{http._XForwardedForRequest}, for
C{proxiedLogFormatter}): it believes the left-most C{X-Forwarded-For}
address whoever the peer is, which is the one address a client writes
itself.  Here the forwarding headers are read only on connections from a
trusted peer, and the client is the right-most address of the chain that is
not itself trusted, as nginx's realip module finds it with
C{real_ip_recursive on}: every address right of it was written by a proxy
this server trusts, the address itself by the last one of them.

  - C{X-Forwarded-For} (every line, in order) or, without it, RFC 7239's
    C{Forwarded: for=} (quoted, bracketed IPv6, ports, obfuscated names);
    an entry that is not an address (C{unknown}, garbage) ends the walk:
    the trusted hop that wrote it is then the client.
  - When every address is trusted, the left-most one is the client.
  - The scheme is C{X-Forwarded-Proto} (or C{proto=} of the C{Forwarded}
    element chosen), C{http} or C{https}: with one value per hop, the
    chosen hop's; otherwise the right-most, written by the peer itself.
    Any other value leaves the connection's own scheme.
  - The port the client's request was made to, for the absolute URLs the
    server builds, is C{X-Forwarded-Port}, chosen as the scheme is; else
    the C{Host} header's; else the scheme's default, as gunicorn does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.web.http_headers import Headers

from app.compat.twisted import raw_headers

__all__ = ["Forwarding", "TrustedProxies", "forwarding", "trusted_network"]

#: The C{--trusted-proxy} value that trusts every peer on a UNIX socket (as
#: nginx's C{set_real_ip_from unix:}).
UNIX_PEERS = "unix:"

#: What stands in a forwarded chain for an entry that is not an address.
UNKNOWN = b"unknown"
#: The right-most entries of a chain that are read; any before them count
#: as one that is not an address.
MAX_HOPS = 64


def trusted_network(text: str) -> str:
    """
    The canonical form of one C{--trusted-proxy} value: a network in CIDR
    notation (a bare address is a /32 or /128), or C{unix:}.

    @raise ValueError: with a message fit for the command line.
    """
    text = text.strip()
    if text == UNIX_PEERS:
        return text
    try:
        network = ip_network(text, strict=True)
    except ValueError as error:
        if "host bits set" in str(error):
            wider = ip_network(text, strict=False)
            raise ValueError(
                f"{text!r} has host bits set (the network is {wider})"
            ) from None
        raise ValueError(
            f"expected an address or a network such as 10.0.0.0/8 or "
            f"2001:db8::/32, or {UNIX_PEERS}, got {text!r}"
        ) from None
    return str(network)


class TrustedProxies:
    """
    The peers whose forwarding headers are believed.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        """
        @param networks: values as L{trusted_network} returns them.
        """
        self.unix = False
        #: (network, mask) pairs as integers, by the length of the address.
        self._networks: dict[int, list[tuple[int, int]]] = {4: [], 16: []}
        for text in networks:
            if text == UNIX_PEERS:
                self.unix = True
                continue
            network = ip_network(text)
            size = 4 if isinstance(network, IPv4Network) else 16
            self._networks[size].append(
                (int(network.network_address), int(network.netmask))
            )

    def trusts(self, peer: IAddress) -> bool:
        """
        Whether C{peer}, the other end of a connection, is trusted.
        """
        if isinstance(peer, (IPv4Address, IPv6Address)):
            packed = _packed(peer.host)
            return packed is not None and self.trusts_packed(packed)
        return isinstance(peer, UNIXAddress) and self.unix

    def trusts_packed(self, packed: bytes) -> bool:
        """
        Whether C{packed} (an address as L{_packed} gives it) is in a
        trusted network.
        """
        value = int.from_bytes(packed, "big")
        for network, mask in self._networks[len(packed)]:
            if value & mask == network:
                return True
        return False


@dataclass(frozen=True, slots=True)
class Forwarding:
    """
    What the forwarding headers of a request from a trusted peer say.

    @ivar client: the client's address.
    @ivar secure: whether the client's own request was over TLS.
    @ivar hops: the entries of the chain before the peer, left to right,
        as the headers spell them.
    @ivar port: the port the client's own request was made to, as
        C{X-Forwarded-Port} says, or L{None} where it says none.
    """

    client: IAddress
    secure: bool
    hops: tuple[bytes, ...]
    port: int | None = None

    def chain(self) -> list[bytes]:
        """
        The hops, each an address or C{unknown}: what a proxy of this server
        passes on in C{X-Forwarded-For} before appending its peer.
        """
        chain = []
        for hop in self.hops:
            node = _node(hop)
            chain.append(UNKNOWN if node is None else _text(node[0]).encode())
        return chain


def forwarding(
    headers: Headers, peer: IAddress, secure: bool, trusted: TrustedProxies
) -> Forwarding:
    """
    The client and scheme of a request with C{headers} that came from
    C{peer}, a trusted proxy, over a connection that is C{secure} or not.
    """
    # One dictionary lookup a header (see app.compat.twisted.raw_headers).
    raw = raw_headers(headers)
    hops = _items(raw.get(b"X-Forwarded-For"))
    elements: list[dict[str, bytes]] = []
    if not hops:
        elements = _forwarded_elements(raw.get(b"Forwarded"))
        hops = [element.get("for", b"") for element in elements]
    if len(hops) > MAX_HOPS:
        hops = [UNKNOWN, *hops[-MAX_HOPS:]]
        elements = elements and [{}, *elements[-MAX_HOPS:]]
    # Walk from the peer leftwards while the hop is trusted.
    chosen = len(hops)
    client = peer
    for index in range(chosen - 1, -1, -1):
        node = _node(hops[index])
        if node is None:
            break
        packed, port = node
        chosen = index
        if len(packed) == 4:
            client = IPv4Address("TCP", _text(packed), port)
        else:
            client = IPv6Address("TCP", _text(packed), port)
        if not trusted.trusts_packed(packed):
            break
    # The scheme of the connection the chosen hop made (when the walk found
    # no address, of the one the unknown client made).
    hop = min(chosen, len(hops) - 1)
    protos = raw.get(b"X-Forwarded-Proto")
    scheme = None
    if protos:
        schemes = _items(protos)
        if schemes:
            scheme = schemes[hop] if len(schemes) == len(hops) else schemes[-1]
    elif elements and hop >= 0:
        scheme = elements[hop].get("proto")
    if scheme is not None:
        scheme = scheme.lower()
        if scheme == b"https":
            secure = True
        elif scheme == b"http":
            secure = False
    return Forwarding(client, secure, tuple(hops), _port(raw, hop, len(hops)))


def _port(raw: dict[bytes, list[bytes]], hop: int, hops: int) -> int | None:
    """
    The port C{X-Forwarded-Port} names for the chosen hop (with one value
    per hop, the hop's; otherwise the right-most), if it is one.
    """
    ports = _items(raw.get(b"X-Forwarded-Port"))
    if not ports:
        return None
    port = ports[hop] if len(ports) == hops and hop >= 0 else ports[-1]
    if not port.isdigit() or len(port) > 5 or not 0 < int(port) <= 65535:
        return None
    return int(port)


def _items(lines: Sequence[bytes] | None) -> list[bytes]:
    """
    The elements of a comma-separated list header, empty ones left out
    (RFC 9110 section 5.6.1).
    """
    if not lines:
        return []
    text = lines[0] if len(lines) == 1 else b",".join(lines)
    if b"," not in text:  # one proxy in front, the usual case
        text = text.strip(b" \t")
        return [text] if text else []
    items = [item.strip(b" \t") for item in text.split(b",")]
    return [item for item in items if item]


#: The first 12 bytes of an IPv4-mapped IPv6 address (::ffff:a.b.c.d).
_MAPPED = bytes(10) + b"\xff\xff"


def _packed(text: str) -> bytes | None:
    """
    The 4 or 16 bytes of the address C{text} (IPv4-mapped IPv6 addresses,
    as a dual-stack socket shows IPv4 peers, as their IPv4 address), or
    C{None} if it is not one.  C{inet_pton} is strict (no leading zeros, no
    zone) and some ten times quicker than the ipaddress module.
    """
    try:
        return inet_pton(AF_INET, text)
    except (OSError, ValueError):
        pass
    try:
        packed = inet_pton(AF_INET6, text)
    except (OSError, ValueError):
        return None
    return packed[12:] if packed[:12] == _MAPPED else packed


def _text(packed: bytes) -> str:
    """
    The canonical spelling of a packed address.
    """
    return inet_ntop(AF_INET if len(packed) == 4 else AF_INET6, packed)


#: An address with a port: C{1.2.3.4:80}, C{[2001:db8::1]:80}, C{[::1]}.
_WITH_PORT = re.compile(rb"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+))(?::([0-9]{1,5}))?")


def _node(text: bytes) -> tuple[bytes, int] | None:
    """
    The packed address and port of one entry of a chain, or C{None} for an
    entry that is not an address (C{unknown}, an obfuscated name, garbage).
    """
    if len(text) > 64:
        return None
    try:
        host = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    packed = _packed(host)
    if packed is not None:
        return packed, 0
    match = _WITH_PORT.fullmatch(text)
    if match is None:
        return None
    bracketed = match.group(1)
    packed = _packed((bracketed or match.group(2)).decode("ascii"))
    if packed is None:
        return None
    if bracketed is not None and b":" not in bracketed:
        return None  # [1.2.3.4]: brackets are for IPv6
    port = int(match.group(3) or 0)
    return packed, port if port <= 65535 else 0


# RFC 7239 section 4: elements separated by commas, pairs by semicolons,
# each value a token or a quoted string.  A bare value may hold ':' and
# brackets here (for=1.2.3.4:80 is common though not a token).
_SEGMENT = re.compile(rb'(?:[^",;]|"(?:[^"\\]|\\.)*")*')
_PAIR = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*"
    rb'(?:([!#$%&\'*+.^_`|~0-9A-Za-z:\[\]-]+)|"((?:[^"\\]|\\.)*)")'
)
_ESCAPE = re.compile(rb"\\(.)")


def _forwarded_elements(lines: Sequence[bytes] | None) -> list[dict[str, bytes]]:
    """
    The elements of C{Forwarded} header lines, each as its lower-cased
    parameter names and values; an element that does not parse, or names
    a parameter twice, is empty (an entry that is not an address).
    """
    if not lines:
        return []
    text = b",".join(lines)
    elements: list[dict[str, bytes]] = []
    element: dict[str, bytes] | None = {}
    position = 0
    while True:
        segment = _SEGMENT.match(text, position)
        assert segment is not None  # it matches the empty string too
        piece = segment.group().strip(b" \t")
        position = segment.end()
        if piece:
            pair = _PAIR.fullmatch(piece)
            name = "" if pair is None else pair.group(1).lower().decode("ascii")
            if pair is None or element is None or name in element:
                element = None
            else:
                token, quoted = pair.group(2), pair.group(3)
                value = token if token is not None else _ESCAPE.sub(rb"\1", quoted)
                element[name] = value
        delimiter = text[position : position + 1]
        position += 1
        if delimiter == b";":
            continue
        if delimiter == b'"':
            # A quoted string that never ends: the rest is one bad element.
            elements.append({})
            return elements
        if element is None:
            elements.append({})
        elif element:
            elements.append(element)
        if not delimiter:
            return elements
        element = {}
