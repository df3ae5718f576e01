"""
The demo WSGI application mounted at /wsgi/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def application(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """
    Name C{SCRIPT_NAME} and C{PATH_INFO} as the server passed them.
    """
    body = (
        f"SCRIPT_NAME: {environ.get('SCRIPT_NAME', '')}\n"
        f"PATH_INFO: {environ.get('PATH_INFO', '')}\n"
    ).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]
