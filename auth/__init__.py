"""
Password files, credential checkers and the realm guarding /private/.
"""

from auth._basic import BasicCredentialFactory
from auth._checkers import BcryptChecker, DigestChecker, VerifiedCache
from auth._digest import DigestCredentialFactory, DigestCredentials, NonceCounts
from auth._errors import HashPoolBusy, NoSuchRealm, PasswordFileError, StaleNonce
from auth._guard import Guard
from auth._htdigest import DigestUser, parse_htdigest
from auth._htpasswd import parse_htpasswd
from auth._interfaces import IChallenger, IDigestCredentials, IImmediateChecker
from auth._names import is_plain_name
from auth._passwd import passwd_main
from auth._pool import HashPool
from auth._realm import HomeRealm

__all__ = [
    "BasicCredentialFactory",
    "BcryptChecker",
    "DigestChecker",
    "DigestCredentialFactory",
    "DigestCredentials",
    "DigestUser",
    "Guard",
    "HashPool",
    "HashPoolBusy",
    "HomeRealm",
    "IChallenger",
    "IDigestCredentials",
    "IImmediateChecker",
    "NoSuchRealm",
    "NonceCounts",
    "PasswordFileError",
    "StaleNonce",
    "VerifiedCache",
    "is_plain_name",
    "parse_htdigest",
    "parse_htpasswd",
    "passwd_main",
]
