"""
The ways authentication fails that are not a plain wrong password.
"""

from __future__ import annotations

from twisted.cred.error import LoginFailed


class PasswordFileError(Exception):
    """
    A password file that cannot be used: C{line} is its 1-based line number
    (0 when the whole file is at fault), C{message} says why without quoting
    the line, which may hold a secret.
    """

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


class NoSuchRealm(PasswordFileError):
    """
    An htdigest file with no line for the realm the server was given.
    """


class StaleNonce(LoginFailed):
    """
    A Digest response that was right but answered a nonce too old (or one
    whose counts are no longer remembered): the client may retry at once
    with a fresh nonce, which the challenge announces with C{stale=true}.
    """


class HashPoolBusy(Exception):
    """
    The password-hashing pool has no room for another check: answer 503.
    """
