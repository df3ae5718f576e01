"""
A production-grade web server built with Klein and Twisted that serves every
chapter of "Twisted Web in 60 seconds".

The layers, each importing only those below it:

    app.cli          the command line: options, logging, workers, passwd
    app.site         one Config into one Site (build_site)
    routes           one Klein module per area of the site
    app.mounts, auth static files, CGI, WSGI, the proxy; the guard
    app.http         the channel, Request, Site, router, pages, access log
    app.sessions     the session store
    app.config       the frozen Config, the single source of defaults
    app.compat       where Twisted's private parts are touched

This package offers the names of its lower layers, which import nothing
above them; the site is assembled by L{app.site.build_site}, and the
command line parsed by L{app.cli.options.config_from_args} into the same
L{Config} that Python code builds.  The server runs as C{klein-server} or
C{python -m app} (L{app.__main__}).
"""

from app.config import Config, ConfigError
from app.http.pages import ErrorResource, error_page, render_error
from app.http.router import Router, new_app
from app.http.site import Site

__all__ = [
    "Config",
    "ConfigError",
    "ErrorResource",
    "Router",
    "Site",
    "error_page",
    "new_app",
    "render_error",
]
