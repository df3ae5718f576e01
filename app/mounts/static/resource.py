"""
A directory served as static files, under the rules of SPEC §4.

L{StaticDirectory} is a leaf resource: it reads the rest of the path from
C{request.postpath}, so it serves the same whether a Klein branch route
returns it or a realm hands it out as an avatar.  It replaces
C{twisted.web.static.File}, which serves dotfiles, has no C{ETag}, answers
500 to C{Range: bytes=-1000} on a shorter file (it seeks to a negative
offset) and sends the full length as the C{Content-Length} of a partial
response.

  - Each path segment must be a plain name: no C{..}, no C{/} or C{\\} (a
    segment is percent-decoded, so C{%2f} can put a slash in one), no NUL,
    no empty segment, no leading dot except a top-level C{.well-known}.
    The real path, symlinks resolved, must stay inside the root and have no
    dot-named part either.  Whatever is refused is the server's 404 page.
  - A directory serves its C{index.html}; without one it is 404 (no
    listing).  A directory asked for without its slash redirects to it.
  - C{ETag} (strong) and C{Last-Modified}; C{If-Match},
    C{If-Unmodified-Since}, C{If-None-Match} and C{If-Modified-Since} are
    evaluated in the order of RFC 9110 §13.2.2.
  - C{Range} (GET only): one range is a 206 with the part's length, several
    disjoint ones a 206 C{multipart/byteranges}; more than L{MAX_RANGES},
    overlapping or malformed ones get the whole file; an unsatisfiable set
    is 416 with C{Content-Range: bytes */SIZE}.
  - Bodies stream from the file in L{CHUNK_SIZE} pieces through a push
    producer that the connection pauses when the client reads slowly.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import stat
import weakref
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast
from urllib.parse import quote

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from app.http.pages import answer, redirect, render_error
from app.mounts.static.types import content_type

__all__ = ["CHUNK_SIZE", "MAX_RANGES", "StaticDirectory", "byte_ranges"]

#: Bytes read from a file and written at a time.
CHUNK_SIZE = 64 * 1024
#: The most ranges one request may ask for; past it, the whole file is sent.
MAX_RANGES = 16
#: The one dot-directory served, and only at the top of the root.
WELL_KNOWN = ".well-known"
#: The file a directory serves.
INDEX = "index.html"

_ALLOW = b"GET, HEAD"
_READ_METHODS = (b"GET", b"HEAD")
#: Request headers that can make the answer other than the whole file.
_CONDITIONAL_HEADERS = frozenset(
    {
        b"if-match",
        b"if-unmodified-since",
        b"if-none-match",
        b"if-modified-since",
        b"if-range",
        b"range",
    }
)
#: O_NOFOLLOW: a symlink met is left to the resolving way (or, where that
#: way opens a path already resolved, was swapped in since).  O_NONBLOCK:
#: opening a FIFO must not wait for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: O_PATH (Linux): a directory passed through needs only search permission,
#: as on a path.
_DIRECTORY_FLAGS = (
    os.O_RDONLY
    | os.O_DIRECTORY
    | os.O_NOFOLLOW
    | os.O_CLOEXEC
    | getattr(os, "O_PATH", 0)
)
#: Most Last-Modified values a directory keeps formatted.
_DATES_KEPT = 1024
#: Characters left as they are when a segment is put back into a Location.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
#: Larger than any file; a longer number of digits means "past the end".
_HUGE = 1 << 63
_INT_RANGE = re.compile(rb"([0-9]*)-([0-9]*)")
_ENTITY_TAG = re.compile(rb'(?:W/)?"[^"]*"')

log = Logger()

#: Byte ranges of a file, each as its first and last (inclusive) offset.
Ranges = list[tuple[int, int]]
#: What is to be sent of a file: literal bytes, or C{(offset, length)} of it.
Pieces = list[bytes | tuple[int, int]]


class StaticDirectory(Resource):
    """
    Serve the files under C{root} (see the module's docstring for the rules).

    A file is found in one of two ways, which answer the same.  The direct
    way opens it relative to the root, held open, one name at a time without
    following any symlink (C{O_NOFOLLOW}), having checked that the root's
    path still leads to the directory held; it costs a few system calls.
    Whatever it does not serve (a symlink on the way, a directory to
    redirect, a missing file, any other method) takes the resolving way:
    the real path, symlinks resolved, checked to lie inside the root.

    @ivar root: the directory served, symlinks resolved.
    """

    isLeaf = True

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root.resolve()
        self._root = str(self.root)
        self._held: _HeldDirectory | None = None
        #: Last-Modified values by modification time: a pure function of
        #: the time, so an entry can never be stale.
        self._dates: dict[int, bytes] = {}

    def render(self, request: Request) -> int:
        if request.channel is None:
            # The client left while this request waited (for a login, say).
            return NOT_DONE_YET
        if request.method in _READ_METHODS:
            found = self._open_directly(request.postpath or [])
            if found is not None:
                descriptor, status, name = found
                return self._serve(request, descriptor, status, content_type(name))
        return self._render_resolved(request)

    def _render_resolved(self, request: Request) -> int:
        """
        Answer C{request} by the resolving way (see the class's docstring).
        """
        postpath: list[bytes] = list(request.postpath or [])
        wanted = _requested_names(postpath)
        if wanted is None:
            return _error(request, 404)
        names, as_directory = wanted
        real = _inside(self._root, os.path.join(self._root, *names))
        if real is None:
            return _error(request, 404)
        try:
            is_directory = stat.S_ISDIR(os.stat(real).st_mode)
        except (OSError, ValueError):
            return _error(request, 404)
        if is_directory:
            if not as_directory:
                return _redirect_to_directory(request)
            real = _inside(self._root, os.path.join(real, INDEX))
            if real is None:
                return _error(request, 404)
        elif as_directory:
            return _error(request, 404)
        if request.method not in _READ_METHODS:
            request.setHeader(b"allow", _ALLOW)
            return _error(request, 405)
        opened = _open_regular(real)
        if opened is None:
            return _error(request, 404)
        descriptor, status = opened
        return self._serve(
            request, descriptor, status, content_type(os.path.basename(real))
        )

    # -- the direct way ------------------------------------------------------

    def _open_directly(
        self, postpath: list[bytes]
    ) -> tuple[int, os.stat_result, str] | None:
        """
        The open regular file that C{postpath} names, its status and name, if
        the direct way finds it; else C{None}.
        """
        wanted = _requested_names(postpath)
        if wanted is None:
            return None
        names, as_directory = wanted
        if as_directory:
            names.append(INDEX)
        elif not names:
            return None
        root = self._root_descriptor()
        if root is None:
            return None
        descriptor = _open_beneath(root, names)
        if descriptor is None:
            return None
        status = _regular_status(descriptor)
        if status is None:
            return None
        return descriptor, status, names[-1]

    def _root_descriptor(self) -> int | None:
        """
        The descriptor of the root held open, if the root's path still leads
        to that directory and to no symlink; else C{None}.
        """
        # The root's path is looked at on every request: a root replaced by
        # a symlink to elsewhere (a user's home, say) must serve nothing.
        # Its parents are not: one swapped for a symlink that still leads to
        # the held directory serves that same directory.
        try:
            status = os.lstat(self._root)
        except OSError:
            return None
        held = self._held
        if held is None or (held.device, held.inode) != (status.st_dev, status.st_ino):
            # First use, or the root was replaced: hold the directory now
            # there, if it may be served at all.
            held = self._held = _HeldDirectory.open(self._root, status)
            if held is None:
                return None
        return held.descriptor

    # -- answering -------------------------------------------------------------

    def _serve(
        self,
        request: Request,
        descriptor: int,
        status: os.stat_result,
        media_type: bytes,
    ) -> int:
        """
        Answer C{request} with the file open as C{descriptor}, which this
        closes or hands to the producer that streams it.
        """
        try:
            plan = _plan(request, self._validators(status), media_type)
        except BaseException:
            os.close(descriptor)
            raise
        return _send(request, descriptor, plan)

    def _validators(self, status: os.stat_result) -> _Opened:
        mtime = int(status.st_mtime)
        last_modified = self._dates.get(mtime)
        if last_modified is None:
            if len(self._dates) >= _DATES_KEPT:
                self._dates.clear()
            last_modified = self._dates[mtime] = http.datetimeToString(mtime)
        etag = b'"%x-%x-%x"' % (status.st_ino, status.st_size, status.st_mtime_ns)
        return _Opened(status.st_size, mtime, etag, last_modified)


class _HeldDirectory:
    """
    A directory held open, to open files relative to; its descriptor is
    closed once nothing refers to it.
    """

    def __init__(self, descriptor: int, status: os.stat_result) -> None:
        self.descriptor = descriptor
        self.device = status.st_dev
        self.inode = status.st_ino
        weakref.finalize(self, os.close, descriptor)

    @classmethod
    def open(cls, path: str, status: os.stat_result) -> _HeldDirectory | None:
        """
        Hold the directory at C{path}, whose C{lstat} is C{status}, if it is
        a directory whose path has no symlink in it (the resolving way
        serves nothing from a root that has one).
        """
        if not stat.S_ISDIR(status.st_mode) or os.path.realpath(path) != path:
            return None
        try:
            descriptor = os.open(path, _DIRECTORY_FLAGS)
        except OSError:
            return None
        try:
            opened = os.fstat(descriptor)
        except OSError:
            opened = None
        if opened is None or (opened.st_dev, opened.st_ino) != (
            status.st_dev,
            status.st_ino,
        ):
            # Replaced again between the two looks: try on the next request.
            os.close(descriptor)
            return None
        return cls(descriptor, status)


def _open_beneath(root: int, names: list[str]) -> int | None:
    """
    Open the file at C{names} below the directory C{root} one name at a
    time, following no symlink; C{None} if any step fails.
    """
    directory = root
    try:
        for name in names[:-1]:
            inner = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
            if directory != root:
                os.close(directory)
            directory = inner
        return os.open(names[-1], _FILE_FLAGS, dir_fd=directory)
    except (OSError, ValueError):
        return None
    finally:
        if directory != root:
            os.close(directory)


# -- finding the file ------------------------------------------------------


def _requested_names(postpath: list[bytes]) -> tuple[list[str], bool] | None:
    """
    The names asked for below the root, and whether the path ended with a
    slash; or C{None} if any segment is not a plain name.
    """
    if not postpath:
        return [], False
    as_directory = postpath[-1] == b""
    segments = postpath[:-1] if as_directory else postpath
    names = []
    for index, segment in enumerate(segments):
        try:
            name = segment.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not _plain_name(name, top=index == 0):
            return None
        names.append(name)
    return names, as_directory


def _plain_name(name: str, *, top: bool) -> bool:
    if not name or "/" in name or "\\" in name or "\x00" in name:
        return False
    return not name.startswith(".") or (top and name == WELL_KNOWN)


def _inside(root: str, path: str) -> str | None:
    """
    The real path of C{path} if it exists inside C{root} without passing
    through a dot-named file or directory, else C{None}.
    """
    try:
        real = os.path.realpath(path, strict=True)
    except (OSError, ValueError):
        return None
    if real == root:
        return real
    prefix = os.path.join(root, "")
    if not real.startswith(prefix):
        return None
    for index, part in enumerate(real[len(prefix) :].split("/")):
        if not _plain_name(part, top=index == 0):
            return None
    return real


class _Opened(NamedTuple):
    """
    What the answer needs to know of an opened file.
    """

    size: int
    mtime: int
    etag: bytes
    last_modified: bytes


def _open_regular(real: str) -> tuple[int, os.stat_result] | None:
    """
    Open C{real} if it is a regular file; return its descriptor and status.
    """
    try:
        descriptor = os.open(real, _FILE_FLAGS)
    except (OSError, ValueError):
        return None
    status = _regular_status(descriptor)
    if status is None:
        return None
    return descriptor, status


def _regular_status(descriptor: int) -> os.stat_result | None:
    """
    The status of the open C{descriptor} if it is a regular file; otherwise
    close it and return C{None}.
    """
    try:
        status = os.fstat(descriptor)
    except OSError:
        status = None
    if status is None or not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        return None
    return status


# -- answering ---------------------------------------------------------------


def _plan(request: Request, opened: _Opened, media_type: bytes) -> int | Pieces:
    """
    Set the headers of the answer to C{request} from C{opened}; return the
    pieces of the body, or the status (304, 412, 416) that answers instead.
    """
    headers = request.responseHeaders
    headers.setRawHeaders(b"etag", [opened.etag])
    headers.setRawHeaders(b"last-modified", [opened.last_modified])
    headers.setRawHeaders(b"accept-ranges", [b"bytes"])
    ranges = None
    if _asks_conditionally(request.requestHeaders):
        precondition = _preconditions(request, opened)
        if precondition is not None:
            return precondition
        if request.method == b"GET" and _if_range_holds(request, opened):
            header = request.requestHeaders.getRawHeaders(b"range")
            if header is not None and len(header) == 1:
                ranges = byte_ranges(header[0], opened.size)
        if ranges is not None and not ranges:
            request.setHeader(b"content-range", b"bytes */%d" % (opened.size,))
            return 416

    pieces: Pieces
    if ranges is None:
        headers.setRawHeaders(b"content-type", [media_type])
        pieces = [(0, opened.size)]
        length = opened.size
    elif len(ranges) == 1:
        first, last = ranges[0]
        request.setResponseCode(206)
        request.setHeader(b"content-type", media_type)
        request.setHeader(
            b"content-range", b"bytes %d-%d/%d" % (first, last, opened.size)
        )
        pieces = [(first, last - first + 1)]
        length = last - first + 1
    else:
        boundary = secrets.token_hex(16).encode("ascii")
        request.setResponseCode(206)
        request.setHeader(
            b"content-type", b"multipart/byteranges; boundary=" + boundary
        )
        pieces = _multipart(ranges, opened.size, media_type, boundary)
        length = sum(len(p) if isinstance(p, bytes) else p[1] for p in pieces)
    headers.setRawHeaders(b"content-length", [b"%d" % (length,)])
    if request.method == b"HEAD" or length == 0:
        return []
    return pieces


def _send(request: Request, descriptor: int, plan: int | Pieces) -> int:
    """
    Write the answer that L{_plan} made, closing C{descriptor} or handing it
    to the producer that streams the file.
    """
    if isinstance(plan, int):
        os.close(descriptor)
        if plan == 304:
            request.setResponseCode(304)
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        return _error(request, plan)
    if not plan:
        os.close(descriptor)
        request.write(b"")
        request.finish()
        return NOT_DONE_YET
    if len(plan) == 1:
        offset, size = cast(tuple[int, int], plan[0])
        if size <= CHUNK_SIZE:
            # Small enough for one write: no producer to set up.
            try:
                data = os.pread(descriptor, size, offset)
            except OSError:
                data = b""
            if len(data) == size:
                os.close(descriptor)
                request.write(data)
                request.finish()
                return NOT_DONE_YET
            # The file changed under us: the producer knows how to give up.
    file = os.fdopen(descriptor, "rb", buffering=0)
    _FileProducer(request, file, plan).start()
    return NOT_DONE_YET


def _asks_conditionally(headers: Headers) -> bool:
    """
    Whether the request has a precondition or C{Range} header: most have
    none, and one look at the few headers beats six lookups.
    """
    for name, _ in headers.getAllRawHeaders():
        if name.lower() in _CONDITIONAL_HEADERS:
            return True
    return False


def _multipart(ranges: Ranges, size: int, media_type: bytes, boundary: bytes) -> Pieces:
    pieces: Pieces = []
    for first, last in ranges:
        pieces.append(
            b"\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
            % (boundary, media_type, first, last, size)
        )
        pieces.append((first, last - first + 1))
    pieces.append(b"\r\n--%s--\r\n" % (boundary,))
    return pieces


def _error(request: Request, code: int) -> int:
    return answer(request, render_error(request, code))


def _redirect_to_directory(request: Request) -> int:
    segments: list[bytes] = [*(request.prepath or []), *(request.postpath or [])]
    path = "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in segments)
    body = redirect(request, path.rstrip("/") + "/")
    if body is None:
        return _error(request, 404)
    return answer(request, body)


# -- conditional requests (RFC 9110 §13) -------------------------------------


def _preconditions(request: Request, opened: _Opened) -> int | None:
    """
    412 or 304 if a precondition header says so, else C{None}.
    """
    headers = request.requestHeaders
    if_match = headers.getRawHeaders(b"if-match")
    if if_match is not None:
        if not _etag_listed(b",".join(if_match), opened.etag, weak=False):
            return 412
    else:
        unmodified_since = _http_date(headers.getRawHeaders(b"if-unmodified-since"))
        if unmodified_since is not None and opened.mtime > unmodified_since:
            return 412
    if_none_match = headers.getRawHeaders(b"if-none-match")
    if if_none_match is not None:
        if _etag_listed(b",".join(if_none_match), opened.etag, weak=True):
            return 304
        return None
    modified_since = _http_date(headers.getRawHeaders(b"if-modified-since"))
    if modified_since is not None and opened.mtime <= modified_since:
        return 304
    return None


def _etag_listed(value: bytes, etag: bytes, *, weak: bool) -> bool:
    """
    Whether the list of entity-tags C{value} (or C{*}) matches C{etag}, by
    weak or strong comparison.
    """
    if value.strip(b" \t") == b"*":
        return True
    for tag in _ENTITY_TAG.findall(value):
        if tag.startswith(b"W/"):
            if weak and tag[2:] == etag:
                return True
        elif tag == etag:
            return True
    return False


def _http_date(values: Sequence[bytes] | None) -> int | None:
    """
    The time of a one-valued date header, or C{None} if it is absent or not
    a date.
    """
    if values is None or len(values) != 1:
        return None
    try:
        return int(http.stringToDatetime(values[0]))
    except (ValueError, IndexError, KeyError, OverflowError):
        # twisted.web's parser raises each of these for some malformed date.
        return None


def _if_range_holds(request: Request, opened: _Opened) -> bool:
    """
    Whether a C{Range} header may be honoured: no C{If-Range}, or one whose
    validator is current (an entity-tag compared strongly, or the date).
    """
    values = request.requestHeaders.getRawHeaders(b"if-range")
    if values is None:
        return True
    if len(values) != 1:
        return False
    value = values[0].strip(b" \t")
    if value.startswith((b'"', b"W/")):
        return value == opened.etag
    return _http_date([value]) == opened.mtime


# -- ranges (RFC 9110 §14) ---------------------------------------------------


def byte_ranges(value: bytes, size: int) -> Ranges | None:
    """
    The ranges of a file of C{size} bytes that the C{Range} header C{value}
    asks for, in the order asked; C{None} when the header is to be ignored
    (malformed, another unit, more than L{MAX_RANGES} ranges, or overlapping
    ones) and the whole file sent; C{[]} when no range overlaps the file.
    """
    unit, equals, specs = value.partition(b"=")
    if not equals or unit.lower() != b"bytes":
        return None
    elements = [element.strip(b" \t") for element in specs.split(b",")]
    elements = [element for element in elements if element]
    if not elements or len(elements) > MAX_RANGES:
        return None
    ranges: Ranges = []
    for element in elements:
        match = _INT_RANGE.fullmatch(element)
        if match is None:
            return None
        first_digits, last_digits = match.groups()
        if first_digits:
            first = _number(first_digits)
            last = _number(last_digits) if last_digits else _HUGE
            if last < first:
                return None
            if first < size:
                ranges.append((first, min(last, size - 1)))
        elif last_digits:
            suffix = _number(last_digits)
            if suffix > 0 and size > 0:
                ranges.append((max(0, size - suffix), size - 1))
        else:
            return None
    ordered = sorted(ranges)
    for (_, last), (first, _) in itertools.pairwise(ordered):
        if first <= last:
            return None
    return ranges


def _number(digits: bytes) -> int:
    digits = digits.lstrip(b"0")
    # Python refuses to parse very long numbers; they are past any end.
    return int(digits) if 0 < len(digits) <= 18 else (0 if not digits else _HUGE)


# -- streaming ---------------------------------------------------------------


@implementer(IPushProducer)
class _FileProducer:
    """
    Write C{pieces} (literal bytes, or C{(offset, length)} of the file) to
    the request, as fast as the connection takes them, then finish it.
    """

    def __init__(
        self,
        request: Request,
        file: BinaryIO,
        pieces: Sequence[bytes | tuple[int, int]],
    ) -> None:
        self._request = request
        self._file = file
        self._pieces = deque(pieces)
        self._paused = False
        self._producing = False
        self._done = False

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(self._client_gone)
        self._produce()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        self._stop()

    def _client_gone(self, reason: Failure) -> None:
        self._stop()

    def _stop(self) -> None:
        if not self._done:
            self._done = True
            self._file.close()

    def _produce(self) -> None:
        if self._producing:
            # Called back from inside a write: the running loop goes on.
            return
        self._producing = True
        try:
            while not self._paused and not self._done:
                chunk = self._next_chunk()
                if chunk is None:
                    return
                self._request.write(chunk)
        finally:
            self._producing = False

    def _next_chunk(self) -> bytes | None:
        """
        The next bytes to write, or C{None} once the response is over.
        """
        if not self._pieces:
            self._stop()
            self._request.unregisterProducer()
            self._request.finish()
            return None
        piece = self._pieces[0]
        if isinstance(piece, bytes):
            self._pieces.popleft()
            return piece
        offset, length = piece
        try:
            self._file.seek(offset)
            chunk = self._file.read(min(length, CHUNK_SIZE))
        except OSError:
            log.failure("Reading a static file failed", Failure())
            chunk = b""
        if not chunk:
            # The file shrank or failed under us: the promised length cannot
            # be sent, so the connection must close.
            self._stop()
            self._request.unregisterProducer()
            self._request.loseConnection()
            return None
        if len(chunk) == length:
            self._pieces.popleft()
        else:
            self._pieces[0] = (offset + len(chunk), length - len(chunk))
        return chunk
