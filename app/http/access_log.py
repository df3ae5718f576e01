"""
The access log: one line in Apache's Combined Log Format per request::

    127.0.0.1 - alice [25/Nov/2026:09:10:00 +0000] "GET / HTTP/1.1" 200 512 "-" "curl/8"

twisted.web's C{combinedLogFormatter} quotes the client address and never
fills in the user; this writes what Apache writes.  Every field a client
chose (request line, user, referer, user agent) is escaped as Apache's
C{ap_escape_logitem} does (C{\\"}, C{\\\\}, C{\\n}, C{\\xHH}), so that no
request can forge a line or a field.

With C{--access-log-format json} each line is instead one JSON object with
the same fields named, and C{duration_ms}: the time from the request's
arrival (when the channel made its Request) to its line, on the site's clock.

Each line goes to the file in one write, appended: several worker processes
can share the file.  L{AccessLog.reopen} (on SIGHUP) lets logrotate move it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from weakref import WeakKeyDictionary

from twisted.application.service import Service
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from app.http.channel import Channel, Refusal
from app.http.site import Site

_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()

_NAMED_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0B: "\\v", 0x0D: "\\r"}

#: Byte (as a latin-1 code point) to its escape; printable ASCII is absent.
_ESCAPES: dict[int, str] = {
    code: _NAMED_ESCAPES.get(code, f"\\x{code:02x}")
    for code in range(256)
    if not 0x20 <= code < 0x7F
}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"
_SPACE = "\\x20"

#: The name of the access log among the site's services.
SERVICE_NAME = "access-log"

log = Logger()


def escape_field(data: bytes | str) -> str:
    """
    C{data} with quotes, backslashes and every byte outside printable ASCII
    escaped, as Apache escapes the fields of its log; text is taken as UTF-8.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return data.decode("latin-1").translate(_ESCAPES)


def log_time(seconds: float) -> str:
    """
    C{[25/Nov/2026:09:10:00 +0000]}: the log's time format, in UTC, with
    English month names whatever the locale.
    """
    t = time.gmtime(seconds)
    month = _MONTHS[t.tm_mon - 1]
    return (
        f"[{t.tm_mday:02d}/{month}/{t.tm_year:04d}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000]"
    )


@dataclass(frozen=True)
class LogEntry:
    """
    What the access log says of one request: the client, the user HTTP
    authentication accepted, the time, the request line as it arrived
    (C{None} where none did), the answer's status and body length, the
    request's headers (for the referer and user agent) and, where known,
    how long the answer took.
    """

    client: IAddress | None
    user: str | None
    seconds: float
    request_line: bytes | None
    status: int
    length: int
    headers: Headers | None
    duration: float | None = None


def combined_line(entry: LogEntry) -> str:
    """
    One line of the Combined Log Format, newline included (the format has
    no place for the duration).
    """
    client, user, seconds = entry.client, entry.user, entry.seconds
    request_line, headers = entry.request_line, entry.headers
    status, length = entry.status, entry.length
    host = getattr(client, "host", None)
    # The user is not quoted: unlike Apache, escape a space in it too, so
    # that the fields still split on spaces.
    user_field = escape_field(user).replace(" ", _SPACE) if user else "-"
    return (
        f"{escape_field(host) if host else '-'} - {user_field} "
        f"{log_time(seconds)} "
        f'"{escape_field(request_line) if request_line is not None else "-"}" '
        f"{status} {length or '-'} "
        f'"{_header(headers, b"referer")}" "{_header(headers, b"user-agent")}"\n'
    )


def _header(headers: Headers | None, name: bytes) -> str:
    values = headers.getRawHeaders(name) if headers is not None else None
    return escape_field(values[-1]) if values else "-"


def json_line(entry: LogEntry) -> str:
    """
    One JSON object a line, newline included: the Combined Log Format's
    fields named (C{None} where the CLF has C{-}), the request line also
    split into C{method}, C{target} and C{protocol}, and C{duration_ms}.
    """
    client, user, seconds = entry.client, entry.user, entry.seconds
    request_line, headers, duration = entry.request_line, entry.headers, entry.duration
    status, length = entry.status, entry.length
    host = getattr(client, "host", None)
    line = None if request_line is None else _text(request_line)
    parts = line.split(" ") if line is not None else []
    method, target, protocol = parts if len(parts) == 3 else (None, None, None)
    record = {
        "client": host if host else None,
        "user": user or None,
        "time": datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "request": line,
        "method": method,
        "target": target,
        "protocol": protocol,
        "status": status,
        "length": length,
        "referer": _json_header(headers, b"referer"),
        "user_agent": _json_header(headers, b"user-agent"),
        "duration_ms": None if duration is None else round(duration * 1000, 3),
    }
    # ASCII escapes: control characters and all cannot break the line.
    return json.dumps(record) + "\n"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def _json_header(headers: Headers | None, name: bytes) -> str | None:
    values = headers.getRawHeaders(name) if headers is not None else None
    return _text(values[-1]) if values else None


class AccessLog(Service):
    """
    Writes the access log of a site to a file, or to standard output for
    C{-}.  As a service of the site, it closes the file when the site stops.
    """

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        stdout: IO[str] | None = None,
        log_format: str = "combined",
    ) -> None:
        self.path = path
        self.log_format = log_format
        self._clock = clock
        #: When each request in progress arrived, by the site's clock.
        self._arrivals: WeakKeyDictionary[Request, float] = WeakKeyDictionary()
        self._stdout = sys.stdout if stdout is None else stdout
        self._file: IO[bytes] | None = None if path == "-" else _open(path)
        self._closed = False

    def log_request(self, request: Request) -> None:
        """
        Log a finished request (twisted.web calls C{Site.log} from
        C{Request.finish}).
        """
        now = self._clock.seconds()
        arrived = self._arrivals.pop(request, None)
        self._entry(
            LogEntry(
                client=request.getClientAddress(),
                user=getattr(request, "remote_user", None),
                seconds=now,
                request_line=b" ".join(
                    (request.method, request.uri, request.clientproto)
                ),
                status=request.code,
                length=request.sentLength,
                headers=request.requestHeaders,
                duration=None if arrived is None else now - arrived,
            )
        )

    def timed(
        self, factory: Callable[[Channel], Request]
    ) -> Callable[[Channel], Request]:
        """
        C{factory}, the site's request factory, noting when each request
        it makes arrived.
        """

        def make(channel: Channel) -> Request:
            request = factory(channel)
            self._arrivals[request] = self._clock.seconds()
            return request

        return make

    def log_refusal(self, refusal: Refusal) -> None:
        """
        Log a request that the channel answered itself (400, 408, 413, 414,
        431), with as much of the request as had arrived.
        """
        self._entry(
            LogEntry(
                client=refusal.client,
                user=None,
                seconds=self._clock.seconds(),
                request_line=refusal.request_line,
                status=refusal.code,
                length=refusal.length,
                headers=refusal.headers,
                duration=None,
            )
        )

    def _entry(self, entry: LogEntry) -> None:
        line = json_line if self.log_format == "json" else combined_line
        self._write(line(entry))

    def reopen(self) -> None:
        """
        Open the file by its name again (after logrotate renamed it); on
        failure keep writing to the open one.
        """
        if self.path == "-" or self._closed:
            return
        try:
            fresh = _open(self.path)
        except OSError as error:
            log.error(
                "Reopening the access log {path} failed: {error}",
                path=self.path,
                error=str(error),
            )
            return
        stale, self._file = self._file, fresh
        if stale is not None:
            stale.close()
        log.info("Reopened the access log {path}", path=self.path)

    def stopService(self) -> None:
        super().stopService()
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, line: str) -> None:
        if self.path == "-":
            self._stdout.write(line)
            self._stdout.flush()
            return
        if self._file is None:
            return  # stopped
        try:
            # One write per line: O_APPEND keeps the lines of several
            # processes whole.
            self._file.write(line.encode("ascii"))
        except OSError as error:
            log.error(
                "Writing the access log {path} failed: {error}",
                path=self.path,
                error=str(error),
            )


def install_access_log(
    site: Site, path: str, clock: IReactorTime, log_format: str = "combined"
) -> AccessLog:
    """
    Give C{site} an access log written to C{path} in C{log_format}, as a
    service of the site named L{SERVICE_NAME}.
    """
    access_log = AccessLog(path, clock, log_format=log_format)
    access_log.setName(SERVICE_NAME)
    access_log.setServiceParent(site.service)
    if log_format == "json":
        site.requestFactory = access_log.timed(  # type: ignore[assignment]
            site.requestFactory
        )
    site.access_log = access_log.log_request
    site.refusal_log = access_log.log_refusal
    return access_log


def access_log_of(site: Site) -> AccessLog | None:
    """
    The access log L{install_access_log} gave C{site}, if any.
    """
    try:
        service = site.service.getServiceNamed(SERVICE_NAME)
    except KeyError:
        return None
    return service if isinstance(service, AccessLog) else None


def _open(path: str) -> IO[bytes]:
    # Unbuffered: each line is one write(2) on a file opened with O_APPEND.
    return open(path, "ab", buffering=0)


def reopen_on_sighup(reactor: Any, access_log: AccessLog | None) -> None:
    """
    Make SIGHUP reopen C{access_log} (for logrotate); without an access log,
    SIGHUP is ignored rather than ending the server.
    """
    if access_log is None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return

    def hangup(number: int, frame: Any) -> None:
        # Signal handlers run between bytecodes: reopen from the reactor loop.
        reactor.callFromThread(access_log.reopen)

    signal.signal(signal.SIGHUP, hangup)
