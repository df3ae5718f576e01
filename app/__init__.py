"""
A production-grade web server built with Klein and Twisted that serves every
chapter of "Twisted Web in 60 seconds".
"""

from typing import Any

from app._config import Config, ConfigError, config_from_args
from app._http import Site
from app._pages import ErrorResource, error_page, render_error
from app._router import Router, new_app

__all__ = [
    "Config",
    "ConfigError",
    "ErrorResource",
    "Router",
    "Site",
    "build_site",
    "config_from_args",
    "error_page",
    "new_app",
    "render_error",
]


def __getattr__(name: str) -> Any:
    # The site is assembled from the modules under routes/, which import
    # app's own modules: importing the assembly lazily keeps
    # "import routes.content" (or any area first) free of an import cycle.
    if name == "build_site":
        from app._site import build_site

        return build_site
    raise AttributeError(f"module 'app' has no attribute {name!r}")
