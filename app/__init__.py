"""
A production-grade web server built with Klein and Twisted that serves every
chapter of "Twisted Web in 60 seconds".
"""

from app._config import Config, ConfigError, config_from_args
from app._http import Site
from app._pages import ErrorResource, error_page, render_error
from app._router import Router, new_app
from app._site import build_site

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
