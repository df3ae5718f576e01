"""
What the CGI and WSGI gateways share: a request as the meta-variables of
RFC 3875 (CGI/1.1), which a script gets as its environment and a WSGI
application in its environ.

twcgi and twisted.web.wsgi each build these themselves, from
C{request.getHost().port} and C{.host}, which a UNIX socket's address
lacks, and from every request header, whatever its name.  Here both take
them from L{request_variables}: C{SERVER_NAME} from a well-formed C{Host}
header, C{SERVER_PORT} for any listening address, C{CONTENT_LENGTH} as the
length of the body received, and no header whose name is other than
letters, digits and C{-} (C{X_Y} must not pose as C{X-Y}).  As Apache's
mod_ssl does, C{HTTPS} is C{on} for a request the client made over TLS (to
this server, or to a trusted proxy in front of it); C{REMOTE_ADDR} is the
client, behind such a proxy too.
"""

from __future__ import annotations

import os
import re

from twisted.web.server import Request

from app.compat.twisted import public_port
from app.http.limits import SERVER_NAME

_REQUEST_HEADER_NAME = re.compile(rb"[A-Za-z0-9-]+")
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{0,5})?")


def request_variables(request: Request, hidden: frozenset[bytes]) -> dict[str, bytes]:
    """
    The meta-variables of RFC 3875 section 4.1 that describe C{request},
    except C{SCRIPT_NAME} and C{PATH_INFO}, which depend on where the script
    is mounted; request headers named in C{hidden} (lower case) are left out.
    """
    server_name, server_port = _server_address(request)
    variables = {
        "GATEWAY_INTERFACE": b"CGI/1.1",
        "SERVER_SOFTWARE": SERVER_NAME,
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": bytes(request.clientproto),
        "REQUEST_METHOD": bytes(request.method),
        "QUERY_STRING": bytes(request.uri).partition(b"?")[2],
    }
    if request.isSecure():
        variables["HTTPS"] = b"on"
    client = getattr(request.getClientAddress(), "host", None)
    if isinstance(client, str):
        # No reverse lookups: RFC 3875 lets REMOTE_HOST be the address.
        variables["REMOTE_ADDR"] = variables["REMOTE_HOST"] = client.encode("ascii")
    user = getattr(request, "remote_user", None)
    if user:
        variables["REMOTE_USER"] = user.encode("utf-8")
    length = _body_length(request)
    if length or request.getHeader(b"content-length") is not None:
        variables["CONTENT_LENGTH"] = b"%d" % (length,)
    content_type = request.getHeader(b"content-type")
    if content_type is not None:
        variables["CONTENT_TYPE"] = content_type
    for name, values in request.requestHeaders.getAllRawHeaders():
        if not _REQUEST_HEADER_NAME.fullmatch(name) or name.lower() in hidden:
            continue
        separator = b"; " if name.lower() == b"cookie" else b", "
        value = separator.join(values)
        if b"\x00" in value:
            continue
        variables["HTTP_" + name.decode("ascii").upper().replace("-", "_")] = value
    return variables


def _server_address(request: Request) -> tuple[bytes, bytes]:
    """
    C{SERVER_NAME} from the C{Host} header (the local address without one)
    and C{SERVER_PORT}, the port the client reached this server on.
    """
    local = request.getHost()
    # Behind a trusted proxy, the port the client reached it on; on a UNIX
    # socket, the scheme's default.
    server_port = b"%d" % (public_port(request),)
    host = request.getHeader(b"host")
    if host is not None:
        match = _HOST.fullmatch(host)
        if match is not None:
            return match.group(1), server_port
    local_host = getattr(local, "host", None)
    if isinstance(local_host, str):
        return local_host.encode("ascii"), server_port
    return b"localhost", server_port


def _body_length(request: Request) -> int:
    content = request.content
    if content is None:
        return 0
    content.seek(0, os.SEEK_END)
    length = content.tell()
    content.seek(0)
    return int(length)
