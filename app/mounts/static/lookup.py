"""
Finding the file a request names below the root, safely (SPEC §4).

C{twisted.web.static.File} joins the path to the root and serves whatever
is there, dotfiles included.  Here each path segment must be a plain name:
no C{..}, no C{/} or C{\\} (a segment is percent-decoded, so C{%2f} can put
a slash in one), no NUL, no empty segment, no leading dot except a
top-level C{.well-known}.  The real path, symlinks resolved, must stay
inside the root and have no dot-named part either.

A file is found in one of two ways, which answer the same.  The direct way
(L{open_directly}) opens it relative to the root, held open, one name at a
time without following any symlink (C{O_NOFOLLOW}), having checked that the
root's path still leads to the directory held; it costs a few system calls.
Whatever it does not serve (a symlink on the way, a directory to redirect,
a missing file, any other method) takes the resolving way (L{inside},
L{open_regular}): the real path, symlinks resolved, checked to lie inside
the root.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref

__all__ = [
    "INDEX",
    "Root",
    "inside",
    "open_directly",
    "open_regular",
    "requested_names",
]

#: The one dot-directory served, and only at the top of the root.
WELL_KNOWN = ".well-known"
#: The file a directory serves.
INDEX = "index.html"


#: O_NOFOLLOW: a symlink met is left to the resolving way (or, where that
#: way opens a path already resolved, was swapped in since).  O_NONBLOCK:
#: opening a FIFO must not wait for a writer.
class OutOfDescriptors(Exception):
    """
    The process (EMFILE) or the system (ENFILE) has no file descriptor left
    to open a file with: the file may well exist, so this is no 404.
    """


def _no_descriptor_left(error: OSError | ValueError) -> None:
    if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
        raise OutOfDescriptors(str(error)) from error


_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: O_PATH (Linux): a directory passed through needs only search permission,
#: as on a path.
_DIRECTORY_FLAGS = (
    os.O_RDONLY
    | os.O_DIRECTORY
    | os.O_NOFOLLOW
    | os.O_CLOEXEC
    | getattr(os, "O_PATH", 0)
)


class Root:
    """
    The directory served, by its real path, and the directory that path
    led to when last looked at, held open for the direct way.

    @ivar path: the root's real path, symlinks resolved.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._held: _HeldDirectory | None = None

    def descriptor(self) -> int | None:
        """
        The descriptor of the root held open, if the root's path still leads
        to that directory and to no symlink; else C{None}.
        """
        # The root's path is looked at on every request: a root replaced by
        # a symlink to elsewhere (a user's home, say) must serve nothing.
        # Its parents are not: one swapped for a symlink that still leads to
        # the held directory serves that same directory.
        try:
            status = os.lstat(self.path)
        except OSError:
            return None
        held = self._held
        if held is None or (held.device, held.inode) != (status.st_dev, status.st_ino):
            # First use, or the root was replaced: hold the directory now
            # there, if it may be served at all.
            held = self._held = _HeldDirectory.open(self.path, status)
            if held is None:
                return None
        return held.descriptor


class _HeldDirectory:
    """
    A directory held open, to open files relative to; its descriptor is
    closed once nothing refers to it.
    """

    def __init__(self, descriptor: int, status: os.stat_result) -> None:
        self.descriptor = descriptor
        self.device = status.st_dev
        self.inode = status.st_ino
        weakref.finalize(self, os.close, descriptor)

    @classmethod
    def open(cls, path: str, status: os.stat_result) -> _HeldDirectory | None:
        """
        Hold the directory at C{path}, whose C{lstat} is C{status}, if it is
        a directory whose path has no symlink in it (the resolving way
        serves nothing from a root that has one).
        """
        if not stat.S_ISDIR(status.st_mode) or os.path.realpath(path) != path:
            return None
        try:
            descriptor = os.open(path, _DIRECTORY_FLAGS)
        except OSError as error:
            _no_descriptor_left(error)
            return None
        try:
            opened = os.fstat(descriptor)
        except OSError:
            opened = None
        if opened is None or (opened.st_dev, opened.st_ino) != (
            status.st_dev,
            status.st_ino,
        ):
            # Replaced again between the two looks: try on the next request.
            os.close(descriptor)
            return None
        return cls(descriptor, status)


# -- the direct way ----------------------------------------------------------


def open_directly(
    root: Root, postpath: list[bytes]
) -> tuple[int, os.stat_result, str] | None:
    """
    The open regular file that C{postpath} names below C{root}, its status
    and name, if the direct way finds it; else C{None}.
    """
    wanted = requested_names(postpath)
    if wanted is None:
        return None
    names, as_directory = wanted
    if as_directory:
        names.append(INDEX)
    elif not names:
        return None
    held = root.descriptor()
    if held is None:
        return None
    descriptor = _open_beneath(held, names)
    if descriptor is None:
        return None
    status = _regular_status(descriptor)
    if status is None:
        return None
    return descriptor, status, names[-1]


def _open_beneath(root: int, names: list[str]) -> int | None:
    """
    Open the file at C{names} below the directory C{root} one name at a
    time, following no symlink; C{None} if any step fails.
    """
    directory = root
    try:
        for name in names[:-1]:
            inner = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
            if directory != root:
                os.close(directory)
            directory = inner
        return os.open(names[-1], _FILE_FLAGS, dir_fd=directory)
    except (OSError, ValueError) as error:
        _no_descriptor_left(error)
        return None
    finally:
        if directory != root:
            os.close(directory)


# -- names and the resolving way ---------------------------------------------


def requested_names(postpath: list[bytes]) -> tuple[list[str], bool] | None:
    """
    The names asked for below the root, and whether the path ended with a
    slash; or C{None} if any segment is not a plain name.
    """
    if not postpath:
        return [], False
    as_directory = postpath[-1] == b""
    segments = postpath[:-1] if as_directory else postpath
    names = []
    for index, segment in enumerate(segments):
        try:
            name = segment.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not _plain_name(name, top=index == 0):
            return None
        names.append(name)
    return names, as_directory


def _plain_name(name: str, *, top: bool) -> bool:
    if not name or "/" in name or "\\" in name or "\x00" in name:
        return False
    return not name.startswith(".") or (top and name == WELL_KNOWN)


def inside(root: str, path: str) -> str | None:
    """
    The real path of C{path} if it exists inside C{root} without passing
    through a dot-named file or directory, else C{None}.
    """
    try:
        real = os.path.realpath(path, strict=True)
    except (OSError, ValueError):
        return None
    if real == root:
        return real
    prefix = os.path.join(root, "")
    if not real.startswith(prefix):
        return None
    for index, part in enumerate(real[len(prefix) :].split("/")):
        if not _plain_name(part, top=index == 0):
            return None
    return real


def open_regular(real: str) -> tuple[int, os.stat_result] | None:
    """
    Open C{real} if it is a regular file; return its descriptor and status.
    """
    try:
        descriptor = os.open(real, _FILE_FLAGS)
    except (OSError, ValueError) as error:
        _no_descriptor_left(error)
        return None
    status = _regular_status(descriptor)
    if status is None:
        return None
    return descriptor, status


def _regular_status(descriptor: int) -> os.stat_result | None:
    """
    The status of the open C{descriptor} if it is a regular file; otherwise
    close it and return C{None}.
    """
    try:
        status = os.fstat(descriptor)
    except OSError:
        status = None
    if status is None or not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        return None
    return status
