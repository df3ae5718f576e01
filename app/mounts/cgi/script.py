"""
The CGI mount: the scripts of one directory, run as RFC 3875 describes.

Built on twisted.web.twcgi (L{CGIScript} runs a script, L{CGIProcessProtocol}
carries its output to the client), with these of twcgi's behaviours replaced:

  - C{PATH_INFO}: twcgi joins the C{bytes} segments of C{request.postpath}
    onto a C{str}, a C{TypeError} for every path below the script, that is
    for every request that reaches it through a Klein branch route.
  - The environment: twcgi passes every request header (a C{Proxy:} header
    becomes C{HTTP_PROXY}, "httpoxy"), the whole environment of the server,
    and a query without C{=} as command-line arguments.  Here a script gets
    the CGI/1.1 variables and C{PATH}, nothing else and no arguments; header
    names other than letters, digits and C{-} are dropped (C{X_Y} must not
    pose as C{X-Y}), as are C{Authorization}, C{Proxy-Authorization} and
    C{Proxy}, as Apache does.
  - The answer: twcgi answers 200 to output without a valid header block and
    keeps all of a script's standard error in memory.  Here a script that
    ends, or writes something other than a header, before a complete header
    block is a 500, its standard error (the last L{MAX_STDERR_BYTES}) logged;
    once its header block is out, its own status stands.
  - Time: a script that has not finished its header block within the timeout
    is killed (504); one silent that long later on is killed and the
    connection closed; a client that goes away kills its script.

The output is streamed: the script's standard output is read only as fast as
the client takes it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IPullProducer,
    IReactorProcess,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import twcgi
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from app.http.limits import SERVER_NAME
from app.http.pages import ErrorResource, render_error

#: The longest header block a script may print.
MAX_HEAD_BYTES = 64 * 1024
#: How much of a script's standard error is kept for the log (the end of it).
MAX_STDERR_BYTES = 64 * 1024
#: How much of the request body is written to a script at a time.
STDIN_CHUNK = 64 * 1024

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

#: Headers of a script's answer that the server writes itself.  The body is
#: streamed (chunked), so a script's Content-Length is dropped rather than
#: trusted to match what it writes.
_SERVER_OWNED = frozenset(
    {
        b"server",
        b"date",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: The header fields RFC 3875 defines for a script's answer (one of each).
_CGI_FIELDS = frozenset({b"content-type", b"location", b"status"})

_REQUEST_HEADER_NAME = re.compile(rb"[A-Za-z0-9-]+")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
_STATUS = re.compile(rb"([2-5][0-9][0-9])(?:[ \t]+([\x20-\x7e\t]*))?")
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{0,5})?")

log = Logger()


# -- the request, as meta-variables ------------------------------------------


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
    and C{SERVER_PORT}, the port the request came in on.
    """
    local = request.getHost()
    port = getattr(local, "port", None)
    if isinstance(port, int):
        server_port = b"%d" % (port,)
    else:  # a UNIX socket: the port the client believes it reached
        server_port = b"443" if request.isSecure() else b"80"
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


# -- the script's answer ------------------------------------------------------


class BadHead(ValueError):
    """
    A script's output does not start with a valid header block.
    """


@dataclass(frozen=True)
class Head:
    """
    A script's header block: the status and the headers to send.
    """

    code: int
    reason: bytes | None
    headers: tuple[tuple[bytes, bytes], ...]


def split_head(output: bytes, start: int = 0) -> tuple[bytes, bytes, int] | None:
    """
    Find the blank line that ends the header block at the start of
    C{output}, looking at lines from offset C{start} on.

    @return: C{None} if the block is not complete yet; else the lines of the
        block, what follows the blank line, and C{start} for the next call.
    """
    while True:
        end = output.find(b"\n", start)
        if end == -1:
            return None
        if end == start or (end == start + 1 and output[start] == 0x0D):
            return output[:start], output[end + 1 :], start
        start = end + 1


def resume_offset(output: bytes) -> int:
    """
    Where L{split_head} may resume on C{output} plus more: the start of its
    last, incomplete line.
    """
    return output.rfind(b"\n") + 1


def parse_head(block: bytes) -> Head:
    """
    Parse a script's header block (RFC 3875 section 6.2), lines ending in
    LF or CRLF, without the blank line.

    @raise BadHead: if it is not a valid CGI header block.
    """
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    special: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadHead(f"not a header line: {_shorten(line)}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise BadHead(f"control characters in header {_shorten(name)}")
        key = name.lower()
        if key in _CGI_FIELDS:
            if key in special:
                raise BadHead(f"header {_shorten(name)} given twice")
            special[key] = value
            if key == b"status":
                continue
        if key not in _SERVER_OWNED:
            headers.append((name, value))
    status = special.get(b"status")
    location = special.get(b"location")
    if not special:
        raise BadHead("no Content-Type, Location or Status header")
    code, reason = 200, None
    if status is not None:
        match = _STATUS.fullmatch(status)
        if match is None:
            raise BadHead(f"not a status: {_shorten(status)}")
        code = int(match.group(1))
        reason = match.group(2) or None
    elif location is not None:
        code = 302
    return Head(code, reason, tuple(headers))


def _shorten(text: bytes, limit: int = 80) -> str:
    shown = repr(text[:limit])
    return shown + "..." if len(text) > limit else shown


# -- the directory and its scripts --------------------------------------------


@dataclass(frozen=True)
class CGISettings:
    """
    What every script of a CGI directory is run with.

    @ivar interpreters: (extension, program) pairs, longest extension first.
    @ivar search_path: the C{PATH} scripts get: the server's, read once.
    """

    root: Path
    interpreters: tuple[tuple[str, str], ...]
    timeout: float
    reactor: IReactorProcess
    clock: IReactorTime
    search_path: bytes

    @classmethod
    def build(
        cls,
        root: Path,
        interpreters: Iterable[tuple[str, str]],
        timeout: float,
        reactor: IReactorProcess,
        clock: IReactorTime,
    ) -> CGISettings:
        return cls(
            root=root.resolve(),
            interpreters=tuple(
                sorted(interpreters, key=lambda pair: len(pair[0]), reverse=True)
            ),
            timeout=timeout,
            reactor=reactor,
            clock=clock,
            search_path=os.environb.get(b"PATH", os.defpath.encode()),
        )

    def command(self, script: Path) -> list[str] | None:
        """
        The command that runs C{script}: through the interpreter of its
        extension, or itself when it is executable; C{None} if neither.
        """
        name = script.name
        for extension, program in self.interpreters:
            if name.endswith(extension) and len(name) > len(extension):
                return [program, str(script)]
        if os.access(script, os.X_OK):
            return [str(script)]
        return None


def _plain_name(segment: bytes) -> str | None:
    """
    C{segment} as a file name, if it names an entry of a directory and
    nothing else: not empty, no dotfile, no separator, no NUL.
    """
    if not segment or segment.startswith(b".") or any(c in segment for c in b"/\\\0"):
        return None
    return os.fsdecode(segment)


_NOT_FOUND = ErrorResource(404)


class CGIDirectory(Resource):
    """
    A directory of CGI scripts (and of directories of them).  A child that
    does not exist, is hidden, or leads outside the root is a 404; so is a
    file that is neither executable nor run by an interpreter.
    """

    def __init__(self, settings: CGISettings, directory: Path | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._directory = settings.root if directory is None else directory

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        name = _plain_name(path)
        if name is None:
            return _NOT_FOUND
        try:
            target = (self._directory / name).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return _NOT_FOUND
        if not target.is_relative_to(self._settings.root):
            return _NOT_FOUND
        if target.is_dir():
            return CGIDirectory(self._settings, target)
        command = self._settings.command(target) if target.is_file() else None
        if command is None:
            return _NOT_FOUND
        return CGIScript(target, command, self._settings)

    def render(self, request: IRequest) -> bytes:
        # No listings of the scripts.
        return render_error(request, 404)


class CGIScript(twcgi.CGIScript):
    """
    One script, run once per request with C{command}.
    """

    def __init__(self, script: Path, command: Sequence[str], settings: CGISettings):
        super().__init__(str(script), reactor=settings.reactor)
        self._command = list(command)
        self._settings = settings

    def render(self, request: Request) -> bytes | int:
        postpath: list[bytes] = request.postpath or []
        prepath: list[bytes] = request.prepath or []
        path_info = b"/" + b"/".join(postpath) if postpath else b""
        if b"\x00" in path_info:
            return render_error(request, 404)
        variables = request_variables(request, CGI_HIDDEN_HEADERS)
        variables["SCRIPT_NAME"] = b"/" + b"/".join(prepath)
        if path_info:
            variables["PATH_INFO"] = path_info
        if any(b"\x00" in value for value in variables.values()):
            return render_error(request, 400)
        environment = {name.encode("ascii"): value for name, value in variables.items()}
        environment[b"PATH"] = self._settings.search_path
        self.runProcess(environment, request)
        return NOT_DONE_YET

    def runProcess(
        self, env: dict[bytes, bytes], request: IRequest, qargs: Sequence[str] = ()
    ) -> None:
        # Unlike twcgi, never pass the query as arguments (qargs is ignored).
        settings = self._settings
        protocol = CGIProcess(request, self.filename, settings.timeout, settings.clock)
        try:
            self._reactor.spawnProcess(
                protocol,
                self._command[0],
                self._command,
                env,
                os.path.dirname(self.filename),
            )
        except Exception:
            protocol.spawn_failed(Failure())


# -- one run of a script ---------------------------------------------------


@implementer(IPullProducer)
class _StandardInput:
    """
    Writes the request body to a script's standard input a chunk at a time,
    as fast as the script reads it, then closes it.
    """

    def __init__(self, body: IO[bytes] | None, process: Any) -> None:
        self._body = body
        self._process = process
        self._closed = False

    def start(self) -> None:
        if self._body is None:
            self.stop()
            return
        self._body.seek(0)
        self._process.registerProducer(self, False)

    def resumeProducing(self) -> None:
        chunk = b""
        if self._body is not None:
            try:
                chunk = self._body.read(STDIN_CHUNK)
            except ValueError:  # the request's body is closed: it is over
                chunk = b""
        if chunk:
            self._process.write(chunk)
        else:
            self.stop()

    def stopProducing(self) -> None:
        # The pipe is gone: the script exited or closed its standard input.
        self._body = None

    def stop(self) -> None:
        """
        Write no more and close the script's standard input.
        """
        if self._closed:
            return
        self._closed = True
        self._body = None
        self._process.unregisterProducer()
        self._process.closeStdin()


def _describe_end(reason: Failure) -> str:
    if reason.check(ProcessDone):
        return "exit status 0"
    exit_code = getattr(reason.value, "exitCode", None)
    signal = getattr(reason.value, "signal", None)
    if signal is not None:
        return f"killed by signal {signal}"
    return f"exit status {exit_code}"


class CGIProcess(twcgi.CGIProcessProtocol):
    """
    One run of a script: feeds it the request body, turns its header block
    into the response's status and headers, streams the rest, and answers
    for it when it fails, stalls or outlives its client.
    """

    def __init__(
        self, request: IRequest, script: str, timeout: float, clock: IReactorTime
    ) -> None:
        super().__init__(request)
        self._script = script
        self._timeout = timeout
        self._clock = clock
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._too_slow)
        self._head_buffer = b""
        self._head_scan = 0
        self._head_done = False
        self._stderr = bytearray()
        self._stderr_dropped = 0
        #: Why the run failed, once it has: logged when the process ends.
        self._failure: str | None = None
        self._answered = False
        self._ended = False
        self._gone = False
        self._stdin: _StandardInput | None = None

    # -- process events ---------------------------------------------------

    def connectionMade(self) -> None:
        if self._answered:  # the client left before the process started
            self._kill()
            return
        self.request.registerProducer(self, True)
        self._stdin = _StandardInput(self.request.content, self.transport)
        self._stdin.start()

    def outReceived(self, data: bytes) -> None:
        if self._answered:
            return
        if self._head_done:
            self._restart_timer()
            self.request.write(data)
            return
        self._head_buffer += data
        found = split_head(self._head_buffer, self._head_scan)
        if found is None:
            if len(self._head_buffer) > MAX_HEAD_BYTES:
                self._fail(f"a header block longer than {MAX_HEAD_BYTES} bytes", 500)
            else:
                self._head_scan = resume_offset(self._head_buffer)
            return
        block, rest, _ = found
        self._head_buffer = b""
        try:
            head = parse_head(block)
        except BadHead as error:
            self._fail(f"an invalid header block: {error}", 500)
            return
        self._head_done = True
        self._restart_timer()
        request = self.request
        # The script decides every header; no default Content-Type.
        request.defaultContentType = None
        request.setResponseCode(head.code, head.reason)
        for name, value in head.headers:
            request.responseHeaders.addRawHeader(name, value)
        # The headers go out now, even if the body takes its time.
        request.write(rest)

    def errReceived(self, data: bytes) -> None:
        self._stderr += data
        excess = len(self._stderr) - MAX_STDERR_BYTES
        if excess > 0:
            del self._stderr[:excess]
            self._stderr_dropped += excess

    def processEnded(self, reason: Failure) -> None:
        self._ended = True
        self._cancel_timer()
        if self._stdin is not None:
            self._stdin.stop()
        end = _describe_end(reason)
        if self._failure is None and not self._head_done and not self._gone:
            self._failure = "it ended before a complete header block"
        if self._failure is not None:
            log.error(
                "CGI script {script} failed: {why} ({end}); "
                "its standard error: {stderr}",
                script=self._script,
                why=self._failure,
                end=end,
                stderr=self._stderr_text(),
            )
            self._answer_error(500)
            return
        # A script killed because its client left is no news; its stderr is.
        if self._stderr or not (reason.check(ProcessDone) or self._gone):
            log.warn(
                "CGI script {script} ended with {end}; its standard error: {stderr}",
                script=self._script,
                end=end,
                stderr=self._stderr_text(),
            )
        if not self._answered:
            self._answered = True
            self.request.unregisterProducer()
            self.request.finish()

    def spawn_failed(self, failure: Failure) -> None:
        """
        The script could not be started at all.
        """
        self._cancel_timer()
        log.failure("CGI script {script} could not start", failure, script=self._script)
        self._answer_error(500)

    # -- the client ---------------------------------------------------------

    def _finished(self, result: object) -> None:
        # Called by the request's notifyFinish: with None once it is finished,
        # with a Failure when the client went away first.
        self._requestFinished = True
        if isinstance(result, Failure):
            self._gone = True
            self._answered = True
            self._kill()

    def stopProducing(self) -> None:
        self._kill()

    def pauseProducing(self) -> None:
        # The client is not reading, so the script waits on it: that is no
        # silence of the script's (the connection's idle timeout applies).
        if self._head_done:
            self._cancel_timer()
        super().pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._head_done and not self._answered and not self._ended:
            self._restart_timer()

    # -- time ---------------------------------------------------------------

    def _restart_timer(self) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(self._timeout, self._too_slow)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if not self._head_done:
            self._fail(f"no header block within {self._timeout:g} seconds", 504)
            return
        self._failure = f"silent for {self._timeout:g} seconds after its headers"
        self._answered = True
        self._kill()
        self.request.loseConnection()

    # -- ending ---------------------------------------------------------------

    def _fail(self, why: str, code: int) -> None:
        """
        Give up on a script that has not printed a valid header block.
        """
        self._failure = why
        self._kill()
        self._answer_error(code)

    def _kill(self) -> None:
        self._cancel_timer()
        if self._stdin is not None:
            self._stdin.stop()
        transport = self.transport
        if self._ended or transport is None:
            return
        try:
            transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        # Close our ends too: a child of the script may still hold them.
        transport.loseConnection()

    def _answer_error(self, code: int) -> None:
        if self._answered:
            return
        self._answered = True
        request = self.request
        if request.producer is not None:
            request.unregisterProducer()
        detail = (
            "The script did not answer in time."
            if code == 504
            else "The script failed to answer this request."
        )
        body = render_error(request, code, detail)
        request.write(body)
        request.finish()

    def _stderr_text(self) -> str:
        text = self._stderr.decode("utf-8", "replace").rstrip()
        if self._stderr_dropped:
            text = f"[{self._stderr_dropped} bytes dropped] ...{text}"
        return text or "(nothing)"


def cgi_directory(
    root: Path,
    interpreters: Iterable[tuple[str, str]],
    timeout: float,
    reactor: Any,
    clock: IReactorTime,
) -> CGIDirectory:
    """
    The resource serving the scripts under C{root}.
    """
    return CGIDirectory(CGISettings.build(root, interpreters, timeout, reactor, clock))
