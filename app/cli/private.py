"""
The private directories a C{--workers} parent makes for its workers (the
shared session file, the metrics files), removed when it stops.

A parent killed outright (SIGKILL, the kernel's out-of-memory killer)
cannot remove its directory, and in C{/dev/shm} what it leaves holds
memory until someone deletes it.  So each directory holds a lock file that
its parent keeps locked (C{flock}) for as long as it lives; the kernel
drops the lock when the parent dies, however it dies.  The next parent
that makes a directory of the same kind in the same place removes those
whose lock it can take: directories of the same user only, never through a
symbolic link, and never one whose lock file is not there yet (its parent
is still making it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile

#: The lock file in each directory, locked by the parent that made it.
LOCK = "parent.lock"


class PrivateDirectory:
    """
    A directory of mode 0700 named C{PREFIX…} in C{where} (the system's
    temporary directory by default), locked while this process lives.

    @ivar path: where it is.
    @ivar swept: the directories of the same kind in C{where} that killed
        parents left, removed before this one was made.
    """

    def __init__(self, prefix: str, where: str | None = None) -> None:
        where = tempfile.gettempdir() if where is None else where
        self.swept = sweep(where, prefix)
        self.path = tempfile.mkdtemp(prefix=prefix, dir=where)
        self._lock = _locked(self.path)

    def remove(self) -> None:
        """
        Remove the directory and what is in it.
        """
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def sweep(where: str, prefix: str) -> list[str]:
    """
    Remove the directories named C{PREFIX…} in C{where} that this user's
    parents made and left when they died; return their paths.
    """
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return []
    uid = os.getuid()
    swept = []
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(where, name)
        try:
            status = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(status.st_mode) or status.st_uid != uid:
            continue
        try:
            lock = os.open(
                os.path.join(path, LOCK), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        except OSError:
            continue  # no lock file: being made, or made by an older release
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)  # its parent lives
            continue
        # Held while removing, so that two parents starting at once do not
        # both remove it.
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock)
        swept.append(path)
    return swept


def _locked(path: str) -> int | None:
    """
    Make C{path}'s lock file, locked: made under another name and renamed
    once locked, so that no one ever finds it there unlocked while its
    parent lives.  L{None} where the file system takes no C{flock} locks:
    such a directory is never swept.
    """
    making = os.path.join(path, f"{LOCK}.new")
    lock = os.open(
        making,
        os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        os.unlink(making)
        return None
    os.rename(making, os.path.join(path, LOCK))
    return lock
