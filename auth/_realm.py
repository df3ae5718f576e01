"""
The realm of C{/private/}: each user's avatar is their own C{public_html}.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.web.resource import IResource
from zope.interface import implementer

from app.http.pages import ErrorResource
from auth._names import is_plain_name

_NOT_FOUND = ErrorResource(404)


def _logout() -> None:
    pass


@implementer(IRealm)
class HomeRealm:
    """
    The avatar of USER is C{serve(HOMES/USER/public_html)} (the route
    module passes the static files of C{/static/}); with no C{HOMES}, or no
    such directory, it is a 404 page.  A C{public_html} that leads out of
    C{HOMES/USER} (a symbolic link to elsewhere) counts as missing.
    """

    def __init__(
        self,
        homes: Path | None,
        serve: Callable[[Path], IResource] | None = None,
    ) -> None:
        self._homes = homes
        self._serve = serve
        self._avatars: dict[str, IResource] = {}

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, IResource, Callable[[], None]]:
        if IResource not in interfaces:
            raise NotImplementedError("the homes realm only serves resources")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else ""
        # Resolved once: the static resource still checks every file it
        # serves against that real directory, so a home replaced later (say
        # by a symbolic link to elsewhere) serves nothing, not more.  Only
        # plain names are ever remembered.
        cached = self._avatars.get(name)
        if cached is not None:
            return IResource, cached, _logout
        if not is_plain_name(name):
            raise UnauthorizedLogin("not a plain user name")
        return IResource, self._avatar(name), _logout

    def _avatar(self, name: str) -> IResource:
        if self._homes is None or self._serve is None:
            return _NOT_FOUND
        home = self._homes / name
        public = home / "public_html"
        try:
            resolved = public.resolve(strict=True)
            inside = resolved.is_relative_to(home.resolve(strict=True))
        except (OSError, RuntimeError):
            return _NOT_FOUND
        if not inside or not resolved.is_dir():
            return _NOT_FOUND
        # Only users who logged in get here: the cache is as big as the
        # password files.
        resource = self._avatars[name] = self._serve(resolved)
        return resource
