"""
The environment a CGI script runs with (RFC 3875 section 4.1).

twcgi builds it in C{CGIScript.render}, with these differences:

  - C{PATH_INFO}: twcgi joins the C{bytes} segments of C{request.postpath}
    onto a C{str}, a C{TypeError} for every path below the script, that is
    for every request that reaches it through a Klein branch route.
  - What goes in: twcgi passes every request header (a C{Proxy:} header
    becomes C{HTTP_PROXY}, "httpoxy"), the whole environment of the server,
    and a query without C{=} as command-line arguments.  Here a script gets
    the CGI/1.1 variables and C{PATH}, nothing else and no arguments; header
    names other than letters, digits and C{-} are dropped (C{X_Y} must not
    pose as C{X-Y}), as are C{Authorization}, C{Proxy-Authorization} and
    C{Proxy}, as Apache does.
"""

from __future__ import annotations

from twisted.web.server import Request

from app.mounts.gateway import request_variables

#: Request headers never passed as C{HTTP_*}: the body's are C{CONTENT_*};
#: credentials stay with the server (Apache's rule); C{Proxy} is httpoxy.
CGI_HIDDEN_HEADERS = frozenset(
    {
        b"content-type",
        b"content-length",
        b"authorization",
        b"proxy-authorization",
        b"proxy",
    }
)


def path_info(request: Request) -> bytes:
    """
    C{PATH_INFO}: the path below the script, C{b""} when there is none.
    """
    postpath: list[bytes] = request.postpath or []
    return b"/" + b"/".join(postpath) if postpath else b""


def script_environment(
    request: Request, path_info: bytes, search_path: bytes
) -> dict[bytes, bytes] | None:
    """
    The environment of the script C{request} runs: the CGI/1.1 variables,
    C{path_info} as C{PATH_INFO}, and C{search_path} as C{PATH}.

    @return: C{None} if a variable would hold a NUL, which no environment
        can.
    """
    prepath: list[bytes] = request.prepath or []
    variables = request_variables(request, CGI_HIDDEN_HEADERS)
    variables["SCRIPT_NAME"] = b"/" + b"/".join(prepath)
    if path_info:
        variables["PATH_INFO"] = path_info
    if any(b"\x00" in value for value in variables.values()):
        return None
    environment = {name.encode("ascii"): value for name, value in variables.items()}
    environment[b"PATH"] = search_path
    return environment
