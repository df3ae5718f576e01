"""
The gateways: CGI scripts at C{/cgi-bin/} and a WSGI application at
C{/wsgi/} (or the prefix C{--wsgi} names), each a branch route returning a
resource built once at start-up.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from app.config import Config
from app.http.router import new_app
from app.mounts.cgi import cgi_directory
from app.mounts.wsgi import ThreadPoolService, WSGIResource, WSGIThreadPool


class CGIRoutes:
    """
    C{/cgi-bin/NAME…}: the scripts of C{config.cgi_root}, C{config.cgi_max}
    of them at most running at once.
    """

    #: Where it is served.
    PATH = "/cgi-bin/"
    app = new_app()

    def __init__(self, config: Config, reactor: Any, clock: IReactorTime) -> None:
        assert config.cgi_root is not None
        self._scripts = cgi_directory(
            config.cgi_root,
            config.cgi_interpreters,
            config.cgi_timeout,
            reactor,
            clock,
            config.cgi_max,
        )
        #: How many scripts run, and how many requests wait for one.
        self.slots = self._scripts.slots

    @app.route(PATH, branch=True)
    def cgi_bin(self, request: IRequest) -> IResource:
        return self._scripts


class WSGIRoutes:
    """
    C{/PREFIX/…} (C{config.wsgi_prefix}, C{wsgi} unless C{--wsgi} names
    another): C{config.wsgi_application}, on a pool of C{config.wsgi_threads}
    threads that runs as a service of C{services} (the site's); eight
    requests a thread may wait for one.  Its routes are built per instance,
    since the prefix is only known from the configuration; at C{/} (prefix
    C{""}), they take every path, and the site serves them after every other
    route.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        clock: IReactorTime,
        services: MultiService,
    ) -> None:
        application = config.wsgi_application
        assert application is not None and config.wsgi_prefix is not None
        pool = WSGIThreadPool(minthreads=0, maxthreads=config.wsgi_threads, name="wsgi")
        ThreadPoolService(pool).setServiceParent(services)
        #: The threads, and the calls waiting for one.
        self.pool = pool
        self._resource = WSGIResource(
            reactor,
            pool,
            application,
            clock=clock,
            display_tracebacks=config.display_tracebacks,
            multiprocess=config.workers > 1,
        )
        resource = self._resource

        def wsgi(request: IRequest) -> IResource:
            return resource

        #: Where the application is mounted, as the metrics name it.
        self.path = f"/{config.wsgi_prefix}/".replace("//", "/")
        self.app = new_app()
        self.app.route(self.path, branch=True, endpoint="wsgi")(wsgi)
