"""
HTTP Basic (RFC 7617): the challenge, and strict decoding of the response.
"""

from __future__ import annotations

import binascii

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.iweb import IRequest
from zope.interface import implementer

from auth._interfaces import IChallenger, IClientCredentials
from auth._names import is_plain_name

#: Longest Basic response looked at; a longer one is refused unread.
MAX_RESPONSE = 1024


def quoted(value: str) -> bytes:
    """
    C{value} as an HTTP quoted-string.
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + escaped.encode("utf-8") + b'"'


@implementer(IClientCredentials)
class BasicCredentials(UsernamePassword):
    """
    A Basic user name and password, and the address of the client that
    sent them (the bcrypt pool shares its places between addresses).
    """

    def __init__(self, username: bytes, password: bytes, client: str | None) -> None:
        super().__init__(username, password)
        self.client = client


def _client_host(request: IRequest) -> str | None:
    """
    The host of C{request}'s peer, as twisted's Digest factory takes it; the
    peer is the client, or the proxy in front of this server.
    """
    address = request.getClientAddress()
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    return None


@implementer(IChallenger)
class BasicCredentialFactory:
    """
    Basic credentials for C{realm}.  Unlike twisted's, the base64 must be
    well formed (twisted's decoder skips any character it does not know)
    and the user name a plain name.
    """

    scheme = b"basic"

    def __init__(self, realm: str) -> None:
        self.realm = realm
        self._challenge = b"Basic realm=" + quoted(realm) + b', charset="UTF-8"'

    def getChallenge(self, request: IRequest) -> dict[str, str]:
        return {"realm": self.realm, "charset": "UTF-8"}

    def challenges(self, request: object, stale: bool) -> list[bytes]:
        return [self._challenge]

    def decode(self, response: bytes, request: IRequest) -> BasicCredentials:
        response = response.strip(b" \t")
        if not response or len(response) > MAX_RESPONSE:
            raise LoginFailed("malformed Basic credentials")
        try:
            decoded = binascii.a2b_base64(response, strict_mode=True)
        except (binascii.Error, ValueError):
            raise LoginFailed("malformed Basic credentials") from None
        username, colon, password = decoded.partition(b":")
        if not colon:
            raise LoginFailed("malformed Basic credentials")
        try:
            name = username.decode("utf-8")
        except UnicodeDecodeError:
            raise LoginFailed("the user name is not UTF-8") from None
        if not is_plain_name(name):
            raise LoginFailed("the user name is not a plain name")
        return BasicCredentials(username, password, _client_host(request))
