"""
What every script of a CGI directory runs with, and the command that runs
one.

twcgi's L{CGIScript} runs the script file itself and its C{FilteredScript}
one interpreter for a whole class; here the interpreter is chosen by the
script's extension, and a script neither executable nor matched is not run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.interfaces import IReactorProcess, IReactorTime


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
