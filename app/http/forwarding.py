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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address as IPv4
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from ipaddress import IPv6Address as IPv6

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.web.http_headers import Headers

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
        v4: list[IPv4Network] = []
        v6: list[IPv6Network] = []
        for text in networks:
            if text == UNIX_PEERS:
                self.unix = True
                continue
            network = ip_network(text)
            if isinstance(network, IPv4Network):
                v4.append(network)
            else:
                v6.append(network)
        self._v4 = tuple(v4)
        self._v6 = tuple(v6)

    def trusts(self, peer: IAddress) -> bool:
        """
        Whether C{peer}, the other end of a connection, is trusted.
        """
        if isinstance(peer, (IPv4Address, IPv6Address)):
            try:
                address = ip_address(peer.host)
            except ValueError:
                return False
            return self.trusts_address(_unmapped(address))
        return isinstance(peer, UNIXAddress) and self.unix

    def trusts_address(self, address: IPv4 | IPv6) -> bool:
        """
        Whether C{address} (with no IPv4-mapped form) is in a trusted network.
        """
        if isinstance(address, IPv6):
            return any(address in network for network in self._v6)
        return any(address in network for network in self._v4)


@dataclass(frozen=True, slots=True)
class Forwarding:
    """
    What the forwarding headers of a request from a trusted peer say.

    @ivar client: the client's address.
    @ivar secure: whether the client's own request was over TLS.
    @ivar chain: the hops before the peer, left to right, each an address
        or C{unknown}: what a proxy of this server passes on before
        appending its peer.
    """

    client: IAddress
    secure: bool
    chain: tuple[bytes, ...]


def forwarding(
    headers: Headers, peer: IAddress, secure: bool, trusted: TrustedProxies
) -> Forwarding:
    """
    The client and scheme of a request with C{headers} that came from
    C{peer}, a trusted proxy, over a connection that is C{secure} or not.
    """
    forwarded_for = _items(headers.getRawHeaders(b"x-forwarded-for"))
    if forwarded_for:
        elements = [{"for": item} for item in forwarded_for]
    else:
        elements = _forwarded_elements(headers.getRawHeaders(b"forwarded"))
    if len(elements) > MAX_HOPS:
        elements = [{}, *elements[-MAX_HOPS:]]
    nodes = [_node(element.get("for", b"")) for element in elements]
    # Walk from the peer leftwards while the hop is trusted.
    chosen = len(nodes)
    client: IAddress = peer
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        if node is None:
            break
        address, port = node
        chosen = index
        client = (
            IPv4Address("TCP", str(address), port)
            if isinstance(address, IPv4)
            else IPv6Address("TCP", str(address), port)
        )
        if not trusted.trusts_address(address):
            break
    # The scheme of the connection the chosen hop made (when the walk found
    # no address, of the one the unknown client made).
    hop = min(chosen, len(nodes) - 1)
    schemes = [
        _scheme(item) for item in _items(headers.getRawHeaders(b"x-forwarded-proto"))
    ]
    scheme = None
    if schemes:
        scheme = schemes[hop] if len(schemes) == len(nodes) else schemes[-1]
    elif not forwarded_for and hop >= 0:
        scheme = _scheme(elements[hop].get("proto", b""))
    if scheme is not None:
        secure = scheme == "https"
    chain = tuple(UNKNOWN if node is None else str(node[0]).encode() for node in nodes)
    return Forwarding(client, secure, chain)


def _items(lines: Sequence[bytes] | None) -> list[bytes]:
    """
    The elements of a comma-separated list header, empty ones left out
    (RFC 9110 section 5.6.1).
    """
    if not lines:
        return []
    items = (item.strip(b" \t") for item in b",".join(lines).split(b","))
    return [item for item in items if item]


def _scheme(value: bytes) -> str | None:
    scheme = value.lower()
    if scheme == b"https":
        return "https"
    if scheme == b"http":
        return "http"
    return None


#: An address with a port: C{1.2.3.4:80}, C{[2001:db8::1]:80}, C{[::1]}.
_WITH_PORT = re.compile(rb"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+))(?::([0-9]{1,5}))?")


def _node(text: bytes) -> tuple[IPv4 | IPv6, int] | None:
    """
    An address and port from one entry of a chain, or C{None} for an entry
    that is not one (C{unknown}, an obfuscated name, garbage).
    """
    text = text.strip(b" \t")
    if not text or len(text) > 64:
        return None
    try:
        return _unmapped(ip_address(text.decode("ascii"))), 0
    except (UnicodeDecodeError, ValueError):
        pass
    match = _WITH_PORT.fullmatch(text)
    if match is None:
        return None
    host = match.group(1) or match.group(2)
    try:
        address = ip_address(host.decode("ascii"))
    except ValueError:
        return None
    if isinstance(address, IPv6) != (match.group(1) is not None):
        return None  # IPv6 is bracketed when a port may follow; IPv4 is not
    port = int(match.group(3) or 0)
    return _unmapped(address), port if port <= 65535 else 0


def _unmapped(address: IPv4 | IPv6) -> IPv4 | IPv6:
    """
    C{address}, or the IPv4 address it maps (C{::ffff:a.b.c.d}, as a
    dual-stack socket shows an IPv4 peer).
    """
    if isinstance(address, IPv6):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
    return address


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
