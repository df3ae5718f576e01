"""
Password files: htpasswd (bcrypt) and htdigest lines, as Apache's tools write
them, and the option errors for files the server cannot use.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import bcrypt
import pytest
from twisted.internet import reactor

from app.cli.main import main
from app.cli.passwd import digest_lines
from auth import NoSuchRealm, PasswordFileError, parse_htdigest, parse_htpasswd
from auth._htdigest import ha1, sha256_tag
from tests.paths import TESTS

DATA = TESTS / "data" / "auth"
HTPASSWD = DATA / "users.htpasswd"
HTDIGEST = DATA / "users.htdigest"


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users"
    path.write_text(text)
    return path


# -- htpasswd -------------------------------------------------------------------


def test_apache_htpasswd_file_is_read() -> None:
    users = parse_htpasswd(HTPASSWD)
    assert sorted(users) == ["alice", "bob", "long"]
    assert bcrypt.checkpw(b"wonderland", users["alice"])


def test_htpasswd_blank_lines_and_comments_are_allowed(tmp_path: Path) -> None:
    line = HTPASSWD.read_text().splitlines()[0]
    path = _file(tmp_path, f"# users\n\n   \n  # indented comment\n{line}\r\n")
    assert list(parse_htpasswd(path)) == ["alice"]


@pytest.mark.parametrize("prefix", ["$2y$", "$2b$", "$2a$"])
def test_htpasswd_bcrypt_variants_are_accepted(tmp_path: Path, prefix: str) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    path = _file(tmp_path, f"carol:{prefix}{hashed[4:]}\n")
    assert bcrypt.checkpw(b"pw", parse_htpasswd(path)["carol"])


def test_htpasswd_first_line_of_a_user_counts(tmp_path: Path) -> None:
    first = bcrypt.hashpw(b"one", bcrypt.gensalt(4)).decode()
    second = bcrypt.hashpw(b"two", bcrypt.gensalt(4)).decode()
    path = _file(tmp_path, f"carol:{first}\ncarol:{second}\n")
    assert parse_htpasswd(path)["carol"] == first.encode()


@pytest.mark.parametrize(
    "line",
    [
        "alice:$apr1$Qw0lNk5j$Ot7bO5Cr7yCpzDbcvmmdb/",  # Apache MD5
        "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # SHA-1
        "alice:rl4lHjBpYR0l2",  # crypt
        "alice:plaintext",
        "alice:$2y$04$short",
        "alice",
        "../x:$2y$04$H5uU3xki9zffENoLoGxrS.7V4KvSfrdrJxRgfzBMJ.UcAodIVaoAm",
        ":$2y$04$H5uU3xki9zffENoLoGxrS.7V4KvSfrdrJxRgfzBMJ.UcAodIVaoAm",
    ],
)
def test_htpasswd_other_lines_are_refused_by_number(tmp_path: Path, line: str) -> None:
    path = _file(tmp_path, f"# first\n\n{line}\n")
    with pytest.raises(PasswordFileError) as raised:
        parse_htpasswd(path)
    assert raised.value.line == 3
    secret = line.partition(":")[2]
    assert not secret or secret not in str(raised.value)


def test_htpasswd_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"\xff\xfe:x\n")
    with pytest.raises(PasswordFileError) as raised:
        parse_htpasswd(path)
    assert raised.value.line == 1


# -- htdigest -------------------------------------------------------------------


def test_apache_htdigest_file_is_read_for_its_realm() -> None:
    users = parse_htdigest(HTDIGEST, "app")
    assert sorted(users) == ["alice", "bob"]
    assert users["alice"].md5 == ha1("MD5", "alice", "app", b"wonderland")
    assert users["alice"].sha256 is None
    other = parse_htdigest(HTDIGEST, "other")
    assert other["alice"].md5 == ha1("MD5", "alice", "other", b"elsewhere")


def test_htdigest_realm_without_lines_is_refused() -> None:
    with pytest.raises(NoSuchRealm):
        parse_htdigest(HTDIGEST, "nobody-here")


def test_htdigest_sha256_line_with_matching_tag_counts(tmp_path: Path) -> None:
    path = _file(tmp_path, "\n".join(digest_lines("carol", "app", b"pw")) + "\n")
    assert parse_htdigest(path, "app")["carol"].sha256 == ha1(
        "SHA-256", "carol", "app", b"pw"
    )


def test_htdigest_sha256_line_of_an_old_password_is_ignored(tmp_path: Path) -> None:
    # Apache's htdigest changed the MD5 line only: the SHA-256 line is stale.
    _old_md5, old_sha256 = digest_lines("carol", "app", b"old")
    new_md5 = f"carol:app:{ha1('MD5', 'carol', 'app', b'new')}"
    path = _file(tmp_path, f"{new_md5}\n{old_sha256}\n")
    assert parse_htdigest(path, "app")["carol"].sha256 is None


def test_htdigest_first_md5_line_is_current(tmp_path: Path) -> None:
    first = ha1("MD5", "carol", "app", b"one")
    second = ha1("MD5", "carol", "app", b"two")
    path = _file(tmp_path, f"carol:app:{first}\ncarol:app:{second}\n")
    assert parse_htdigest(path, "app")["carol"].md5 == first


def test_htdigest_tag_is_sha256_of_md5_hex() -> None:
    md5 = ha1("MD5", "carol", "app", b"pw")
    assert sha256_tag(md5) == hashlib.sha256(md5.encode()).hexdigest()[:8]


@pytest.mark.parametrize(
    "line",
    [
        "alice:app",
        "alice:app:1df2522926dcf591bdacddbc2b38ba8",  # 31 digits
        "alice:app:1df2522926dcf591bdacddbc2b38ba80aa",
        "alice:app:zzf2522926dcf591bdacddbc2b38ba80",
        "alice:app:" + "a" * 64 + ":1234567",
        "a/b:app:1df2522926dcf591bdacddbc2b38ba80",
        "alice:app:$2y$04$H5uU3xki9zffENoLoGxrS.7V4KvSfrdrJxRgfzBMJ.UcAodIVaoAm",
    ],
)
def test_htdigest_malformed_lines_are_refused_by_number(
    tmp_path: Path, line: str
) -> None:
    good = "bob:app:ba11e781773d47d358e975fef28b9e6e"
    path = _file(tmp_path, f"{good}\n# note\n{line}\n")
    with pytest.raises(PasswordFileError) as raised:
        parse_htdigest(path, "app")
    assert raised.value.line == 3


# -- the options ----------------------------------------------------------------


def _run(*argv: str) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(list(argv), reactor, stdout=stdout, stderr=stderr)
    return status, stderr.getvalue()


def test_malformed_htpasswd_is_a_bad_option_value(tmp_path: Path) -> None:
    path = _file(tmp_path, "alice:$apr1$Qw0lNk5j$Ot7bO5Cr7yCpzDbcvmmdb/\n")
    status, error = _run("--htpasswd", str(path))
    assert status == 2
    assert error.count("\n") == 1
    assert "--htpasswd" in error and "line 1" in error
    assert "Ot7bO5Cr7" not in error


def test_malformed_htdigest_is_a_bad_option_value(tmp_path: Path) -> None:
    path = _file(tmp_path, "alice:app:nothex\n")
    status, error = _run("--htdigest", str(path))
    assert (status, error.count("\n")) == (2, 1)
    assert "--htdigest" in error and "line 1" in error


def test_htdigest_without_the_realm_is_a_bad_option_value() -> None:
    status, error = _run("--htdigest", str(HTDIGEST), "--realm", "elsewhere")
    assert (status, error.count("\n")) == (2, 1)
    assert "--realm" in error and "elsewhere" in error


def test_unreadable_password_file_is_a_bad_option_value(tmp_path: Path) -> None:
    status, error = _run("--htpasswd", str(tmp_path))
    assert (status, error.count("\n")) == (2, 1)
    assert "--htpasswd" in error
