"""
The resources of the CGI mount: a directory of scripts, and one script,
run once per request.

twcgi's L{CGIScript} runs its file with a query without C{=} as
command-line arguments, and its L{CGIDirectory} runs any file it finds, a
dotfile or one reached through a symlink out of the directory included.
Here a directory serves only plain names that stay below its root, and a
script is run through the interpreter of its extension or on its own, and
never with arguments, in a process group of its own, when its mount has a
place for it (L{app.mounts.cgi.slots}).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import twcgi
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from app.compat.twisted import cgi_script_reactor, spawn_process_group
from app.http.limits import out_of_descriptors
from app.http.pages import ErrorResource, render_error
from app.mounts.cgi.environment import path_info, script_environment
from app.mounts.cgi.process import CGIProcess
from app.mounts.cgi.settings import CGISettings
from app.mounts.cgi.slots import Release, ScriptSlots


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
    file that is neither executable nor run by an interpreter.  Its
    scripts, its subdirectories' included, share C{slots}.
    """

    def __init__(
        self,
        settings: CGISettings,
        slots: ScriptSlots,
        directory: Path | None = None,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._slots = slots
        self._directory = settings.root if directory is None else directory

    @property
    def slots(self) -> ScriptSlots:
        """
        The places for running scripts, and the queue for them.
        """
        return self._slots

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
            return CGIDirectory(self._settings, self._slots, target)
        command = self._settings.command(target) if target.is_file() else None
        if command is None:
            return _NOT_FOUND
        return CGIScript(target, command, self._settings, self._slots)

    def render(self, request: IRequest) -> bytes:
        # No listings of the scripts.
        return render_error(request, 404)


class CGIScript(twcgi.CGIScript):
    """
    One script, run once per request with C{command}, when C{slots} has a
    place for it.
    """

    def __init__(
        self,
        script: Path,
        command: Sequence[str],
        settings: CGISettings,
        slots: ScriptSlots,
    ):
        super().__init__(str(script), reactor=settings.reactor)
        self._command = list(command)
        self._settings = settings
        self._slots = slots

    def render(self, request: Request) -> bytes | int:
        below = path_info(request)
        if b"\x00" in below:
            return render_error(request, 404)
        environment = script_environment(request, below, self._settings.search_path)
        if environment is None:
            return render_error(request, 400)
        self._slots.run(
            request, lambda release: self._start(environment, request, release)
        )
        return NOT_DONE_YET

    def _start(
        self, env: dict[bytes, bytes], request: IRequest, release: Release
    ) -> None:
        # Unlike twcgi's runProcess, never pass the query as arguments.
        settings = self._settings
        protocol = CGIProcess(
            request, self.filename, settings.timeout, settings.clock, release
        )
        try:
            spawn_process_group(
                cgi_script_reactor(self),
                protocol,
                self._command[0],
                self._command,
                env,
                os.path.dirname(self.filename),
            )
        except Exception as error:
            if out_of_descriptors(error):
                self._slots.note_out_of_descriptors(self.filename, error)
            protocol.spawn_failed(Failure())


def cgi_directory(
    root: Path,
    interpreters: Iterable[tuple[str, str]],
    timeout: float,
    reactor: Any,
    clock: IReactorTime,
    running_max: int,
) -> CGIDirectory:
    """
    The resource serving the scripts under C{root}, C{running_max} of them
    at most at once.
    """
    return CGIDirectory(
        CGISettings.build(root, interpreters, timeout, reactor, clock),
        ScriptSlots(running_max, timeout, clock),
    )
