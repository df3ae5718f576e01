"""
Static files and static dispatch: C{/static/} and one branch route per
C{--mount PREFIX=DIR}, each serving a L{StaticDirectory}.
"""

from __future__ import annotations

from pathlib import Path

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from app.config import Config
from app.http.router import new_app
from app.mounts.static import StaticDirectory


class FileRoutes:
    """
    The directories that C{config} serves; their routes are built per
    instance, since the mounts are only known from the configuration.
    """

    #: Where C{--static} is served.
    STATIC = "static"

    def __init__(self, config: Config) -> None:
        self.app = new_app()
        #: Where the directories are served.
        self.paths: list[str] = []
        if config.static_root is not None:
            self._serve(self.STATIC, config.static_root)
        for prefix, directory in config.mounts:
            self._serve(prefix, directory)

    def _serve(self, prefix: str, directory: Path) -> None:
        # Built once here, not per request.
        resource = StaticDirectory(directory)

        def files(request: IRequest) -> IResource:
            return resource

        self.paths.append(f"/{prefix}/")
        self.app.route(f"/{prefix}/", branch=True, endpoint=f"files:{prefix}")(files)
