"""
Password files, credential checkers and the realm guarding /private/.
"""

from auth._basic import BasicCredentialFactory, BasicCredentials
from auth._checkers import (
    BCRYPT_MAX_PASSWORD,
    BcryptChecker,
    DigestChecker,
    VerifiedCache,
)
from auth._digest import (
    NONCE_LIFETIME,
    Claims,
    DigestCredentialFactory,
    DigestCredentials,
    NonceCounts,
    SharedNonceCounts,
)
from auth._errors import HashPoolBusy, NoSuchRealm, PasswordFileError, StaleNonce
from auth._guard import Guard
from auth._htdigest import DigestUser, digest_owner, ha1, parse_htdigest, sha256_tag
from auth._htpasswd import parse_htpasswd
from auth._interfaces import (
    IChallenger,
    IClientCredentials,
    IDigestCredentials,
    IImmediateChecker,
)
from auth._names import is_plain_name, is_plain_realm
from auth._pool import HashPool
from auth._realm import HomeRealm

__all__ = [
    "BCRYPT_MAX_PASSWORD",
    "NONCE_LIFETIME",
    "BasicCredentialFactory",
    "BasicCredentials",
    "BcryptChecker",
    "Claims",
    "DigestChecker",
    "DigestCredentialFactory",
    "DigestCredentials",
    "DigestUser",
    "Guard",
    "HashPool",
    "HashPoolBusy",
    "HomeRealm",
    "IChallenger",
    "IClientCredentials",
    "IDigestCredentials",
    "IImmediateChecker",
    "NoSuchRealm",
    "NonceCounts",
    "PasswordFileError",
    "SharedNonceCounts",
    "StaleNonce",
    "VerifiedCache",
    "digest_owner",
    "ha1",
    "is_plain_name",
    "is_plain_realm",
    "parse_htdigest",
    "parse_htpasswd",
    "sha256_tag",
]
