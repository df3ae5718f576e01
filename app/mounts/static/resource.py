"""
A directory served as static files, under the rules of SPEC §4.

L{StaticDirectory} is a leaf resource: it reads the rest of the path from
C{request.postpath}, so it serves the same whether a Klein branch route
returns it or a realm hands it out as an avatar.  It replaces
C{twisted.web.static.File}, which serves dotfiles, has no C{ETag}, answers
500 to C{Range: bytes=-1000} on a shorter file (it seeks to a negative
offset) and sends the full length as the C{Content-Length} of a partial
response.  The rules live beside it, one job a module:

  - L{app.mounts.static.lookup}: which names may be asked for, and how the
    file is found below the root without leaving it.  Whatever is refused
    is the server's 404 page.
  - Here: a directory serves its C{index.html}; without one it is 404 (no
    listing).  A directory asked for without its slash redirects to it.
    A file asked for with another method than GET or HEAD is 405.
  - L{app.mounts.static.conditional}: C{ETag}, C{Last-Modified}, the
    C{If-*} headers and the reading of C{Range}.
  - Here: a C{FILE.gz} beside the file, regular and not older, is served in
    its place (as nginx's C{gzip_static}) to a C{GET} without C{Range} that
    accepts gzip; a range, a C{HEAD}, or a client that does not accept gzip
    gets the file itself.  Either way the answer says C{Vary:
    Accept-Encoding}.  A C{.gz} asked for by name is served as itself.
  - L{app.mounts.static.plan}: the headers and the parts of the file that
    make the answer (206, C{multipart/byteranges}, 416).
  - L{app.mounts.static.producer}: the body, streamed from the file.
  - L{app.mounts.static.types}: the C{Content-Type}.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from app.http.compression import compresses, vary_on_encoding
from app.http.pages import answer, redirect, render_busy, render_error
from app.mounts.static.conditional import OpenedFile
from app.mounts.static.lookup import (
    INDEX,
    OutOfDescriptors,
    Root,
    inside,
    open_directly,
    open_regular,
    requested_names,
)
from app.mounts.static.plan import plan_response
from app.mounts.static.producer import Pieces, send_pieces
from app.mounts.static.types import content_type

__all__ = ["StaticDirectory"]

_ALLOW = b"GET, HEAD"
_READ_METHODS = (b"GET", b"HEAD")
#: Most Last-Modified values a directory keeps formatted.
_DATES_KEPT = 1024
#: Characters left as they are when a segment is put back into a Location.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"


class StaticDirectory(Resource):
    """
    Serve the files under C{root} (see the module's docstring for the rules).

    A file is found the direct way, relative to the root held open and
    following no symlink, or else the resolving way, which answers the same
    (see L{app.mounts.static.lookup}).

    @ivar root: the directory served, symlinks resolved.
    """

    isLeaf = True

    def __init__(
        self, root: Path, seconds: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.root = root.resolve()
        #: The clock of the "out of descriptors" log line's rate.
        self._seconds = seconds
        self._told_at: float | None = None
        self._root = Root(str(self.root))
        #: Last-Modified values by modification time: a pure function of
        #: the time, so an entry can never be stale.
        self._dates: dict[int, bytes] = {}

    def render(self, request: Request) -> int:
        if request.channel is None:
            # The client left while this request waited (for a login, say).
            return NOT_DONE_YET
        try:
            return self._render_file(request)
        except OutOfDescriptors as error:
            return self._busy(request, error)

    def _busy(self, request: Request, error: OutOfDescriptors) -> int:
        """
        No descriptor to open the file with: 503, try again shortly; the
        log says so at most once a second.
        """
        now = self._seconds()
        if self._told_at is None or now - self._told_at >= 1.0:
            self._told_at = now
            log.warn(
                "Out of file descriptors serving static files: {error}", error=error
            )
        return answer(request, render_busy(request))

    def _render_file(self, request: Request) -> int:
        if request.method in _READ_METHODS:
            found = self._open_directly(request.postpath or [])
            if found is not None:
                descriptor, status, name = found
                try:
                    beside = self._open_directly(_gzip_postpath(request.postpath or []))
                except BaseException:
                    os.close(descriptor)
                    raise
                gzipped = None if beside is None else beside[:2]
                return self._serve(
                    request, descriptor, status, content_type(name), gzipped
                )
        return self._render_resolved(request)

    def _open_directly(
        self, postpath: list[bytes]
    ) -> tuple[int, os.stat_result, str] | None:
        """
        The open regular file that C{postpath} names, its status and name, if
        the direct way finds it; else C{None}.
        """
        return open_directly(self._root, postpath)

    def _render_resolved(self, request: Request) -> int:
        """
        Answer C{request} by the resolving way (see the class's docstring).
        """
        postpath: list[bytes] = list(request.postpath or [])
        wanted = requested_names(postpath)
        if wanted is None:
            return _error(request, 404)
        names, as_directory = wanted
        root = self._root.path
        real = inside(root, os.path.join(root, *names))
        if real is None:
            return _error(request, 404)
        try:
            is_directory = stat.S_ISDIR(os.stat(real).st_mode)
        except (OSError, ValueError):
            return _error(request, 404)
        if is_directory:
            if not as_directory:
                return _redirect_to_directory(request)
            real = inside(root, os.path.join(real, INDEX))
            if real is None:
                return _error(request, 404)
        elif as_directory:
            return _error(request, 404)
        if request.method not in _READ_METHODS:
            request.setHeader(b"allow", _ALLOW)
            return _error(request, 405)
        opened = open_regular(real)
        if opened is None:
            return _error(request, 404)
        descriptor, status = opened
        try:
            beside = inside(root, real + ".gz")
            gzipped = None if beside is None else open_regular(beside)
        except BaseException:
            os.close(descriptor)
            raise
        return self._serve(
            request, descriptor, status, content_type(os.path.basename(real)), gzipped
        )

    def _serve(
        self,
        request: Request,
        descriptor: int,
        status: os.stat_result,
        media_type: bytes,
        gzipped: tuple[int, os.stat_result] | None = None,
    ) -> int:
        """
        Answer C{request} with the file open as C{descriptor}, or with the
        C{FILE.gz} beside it open as C{gzipped}; close what is not sent, and
        close or hand to the producer that streams it what is.
        """
        serve_gzipped = False
        if gzipped is not None:
            gzipped_descriptor, gzipped_status = gzipped
            if gzipped_status.st_mtime_ns < status.st_mtime_ns:
                # Older than the file: left over from an earlier version.
                os.close(gzipped_descriptor)
            else:
                vary_on_encoding(request.responseHeaders)
                if compresses(request.requestHeaders, request.method):
                    os.close(descriptor)
                    descriptor, status = gzipped_descriptor, gzipped_status
                    serve_gzipped = True
                else:
                    os.close(gzipped_descriptor)
        try:
            plan = plan_response(
                request, self._validators(status), media_type, gzipped=serve_gzipped
            )
        except BaseException:
            os.close(descriptor)
            raise
        return _send(request, descriptor, plan)

    def _validators(self, status: os.stat_result) -> OpenedFile:
        mtime = int(status.st_mtime)
        last_modified = self._dates.get(mtime)
        if last_modified is None:
            if len(self._dates) >= _DATES_KEPT:
                self._dates.clear()
            last_modified = self._dates[mtime] = http.datetimeToString(mtime)
        etag = b'"%x-%x-%x"' % (status.st_ino, status.st_size, status.st_mtime_ns)
        return OpenedFile(status.st_size, mtime, etag, last_modified)


def _send(request: Request, descriptor: int, plan: int | Pieces) -> int:
    """
    Write the answer that L{plan_response} made, closing C{descriptor} or
    handing it to the producer that streams the file.
    """
    if isinstance(plan, int):
        os.close(descriptor)
        if plan == 304:
            request.setResponseCode(304)
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        return _error(request, plan)
    send_pieces(request, descriptor, plan)
    return NOT_DONE_YET


log = Logger()


def _gzip_postpath(postpath: list[bytes]) -> list[bytes]:
    """
    The path of the C{FILE.gz} beside the file that C{postpath} names.
    """
    if not postpath or postpath[-1] == b"":
        return [*postpath[:-1], INDEX.encode("ascii") + b".gz"]
    return [*postpath[:-1], postpath[-1] + b".gz"]


def _error(request: Request, code: int) -> int:
    return answer(request, render_error(request, code))


def _redirect_to_directory(request: Request) -> int:
    segments: list[bytes] = [*(request.prepath or []), *(request.postpath or [])]
    path = "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in segments)
    body = redirect(request, path.rstrip("/") + "/")
    if body is None:
        return _error(request, 404)
    return answer(request, body)
