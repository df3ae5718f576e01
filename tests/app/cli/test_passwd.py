"""
C{python -m app passwd}: adding and replacing users in password files.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from app.cli.passwd import passwd_main
from auth import parse_htdigest, parse_htpasswd
from auth._htdigest import ha1
from tests.paths import ROOT

DATA = ROOT / "tests" / "data" / "auth"
CHEAP = {"APP_PASSWD_BCRYPT_COST": "4"}


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CHEAP.items():
        monkeypatch.setenv(name, value)


def passwd(
    *argv: str, stdin: bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "app", "passwd", *argv],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, **CHEAP, **(env or {})},
        timeout=30,
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _prompts(*answers: str) -> Callable[[str], str]:
    replies = iter(answers)
    return lambda prompt: next(replies)


def test_new_htpasswd_file_from_stdin(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    done = passwd(str(path), "carol", stdin=b"s3cret\n")
    assert done.returncode == 0, done.stderr
    assert bcrypt.checkpw(b"s3cret", parse_htpasswd(path)["carol"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_new_htdigest_file_has_md5_then_sha256_line(tmp_path: Path) -> None:
    path = tmp_path / "users.htdigest"
    done = passwd("--digest", "--realm", "zoo", str(path), "carol", stdin=b"pw\n")
    assert done.returncode == 0, done.stderr
    md5_line, sha256_line = path.read_text().splitlines()
    assert md5_line == f"carol:zoo:{ha1('MD5', 'carol', 'zoo', b'pw')}"
    assert sha256_line.startswith(f"carol:zoo:{ha1('SHA-256', 'carol', 'zoo', b'pw')}:")
    user = parse_htdigest(path, "zoo")["carol"]
    assert user.sha256 == ha1("SHA-256", "carol", "zoo", b"pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_digest_realm_defaults_to_app(tmp_path: Path) -> None:
    path = tmp_path / "users.htdigest"
    assert passwd("--digest", str(path), "carol", stdin=b"pw\n").returncode == 0
    assert list(parse_htdigest(path, "app")) == ["carol"]


def test_replacing_a_user_keeps_the_rest_and_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    shutil.copy(DATA / "users.htpasswd", path)
    path.write_text("# team\n" + path.read_text())
    path.chmod(0o640)
    before = path.read_text().splitlines()
    assert passwd(str(path), "alice", stdin=b"changed\n").returncode == 0
    after = path.read_text().splitlines()
    assert after[0] == "# team" and after[2:] == before[2:]
    assert after[1].startswith("alice:$2b$04$")
    assert bcrypt.checkpw(b"changed", parse_htpasswd(path)["alice"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.htpasswd"]


def test_replacing_a_digest_user_touches_its_realm_only(tmp_path: Path) -> None:
    path = tmp_path / "users.htdigest"
    shutil.copy(DATA / "users.htdigest", path)
    assert passwd("--digest", str(path), "alice", stdin=b"new\n").returncode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    assert lines[0] == f"alice:app:{ha1('MD5', 'alice', 'app', b'new')}"
    assert lines[2:] == (DATA / "users.htdigest").read_text().splitlines()[1:]
    assert parse_htdigest(path, "other")["alice"].md5 == ha1(
        "MD5", "alice", "other", b"elsewhere"
    )


def test_apache_htpasswd_verifies_the_written_file(tmp_path: Path) -> None:
    htpasswd = shutil.which("htpasswd")
    assert htpasswd is not None, "install apache2-utils (make test does)"
    path = tmp_path / "users.htpasswd"
    assert passwd(str(path), "carol", stdin=b"s3cret\n").returncode == 0
    check = subprocess.run(
        [htpasswd, "-v", "-b", str(path), "carol", "s3cret"], capture_output=True
    )
    assert check.returncode == 0


def test_only_first_line_of_stdin_is_the_password(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    assert passwd(str(path), "carol", stdin=b"first\r\nsecond\n").returncode == 0
    assert bcrypt.checkpw(b"first", parse_htpasswd(path)["carol"])


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["only-a-file"],
        ["FILE", "../evil"],
        ["FILE", "a:b"],
        ["FILE", ".hidden"],
        ["FILE", "carol", "password-as-argument"],
        ["--realm", 'a"b', "--digest", "FILE", "carol"],
        ["--bogus", "FILE", "carol"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, argv: list[str]) -> None:
    argv = [str(tmp_path / "f") if arg == "FILE" else arg for arg in argv]
    stderr = io.StringIO()
    assert passwd_main(argv, io.StringIO("pw\n"), stderr) == 2
    assert stderr.getvalue().count("\n") == 1
    assert not (tmp_path / "f").exists()


def test_bad_arguments_exit_2_from_the_command_line(tmp_path: Path) -> None:
    done = passwd(str(tmp_path / "f"), "../evil", stdin=b"pw\n")
    assert done.returncode == 2
    assert done.stderr.count(b"\n") == 1 and b"Traceback" not in done.stderr
    assert b"plain user name" in done.stderr


def test_missing_directory_exits_2(tmp_path: Path) -> None:
    stderr = io.StringIO()
    path = str(tmp_path / "no" / "file")
    assert passwd_main([path, "carol"], io.StringIO("pw\n"), stderr) == 2
    assert stderr.getvalue().count("\n") == 1


def test_empty_password_is_refused(tmp_path: Path) -> None:
    stderr = io.StringIO()
    path = tmp_path / "f"
    assert passwd_main([str(path), "carol"], io.StringIO("\n"), stderr) == 1
    assert "empty" in stderr.getvalue()
    assert not path.exists()


def test_terminal_prompts_twice(tmp_path: Path) -> None:
    path = tmp_path / "f"
    stderr = io.StringIO()
    status = passwd_main(
        [str(path), "carol"], _Terminal(), stderr, prompt=_prompts("pw", "pw")
    )
    assert status == 0, stderr.getvalue()
    assert bcrypt.checkpw(b"pw", parse_htpasswd(path)["carol"])


def test_terminal_prompts_that_differ_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    stderr = io.StringIO()
    status = passwd_main(
        [str(path), "carol"], _Terminal(), stderr, prompt=_prompts("pw", "wp")
    )
    assert status == 1 and "do not match" in stderr.getvalue()
    assert not path.exists()


def test_default_bcrypt_cost_is_12(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APP_PASSWD_BCRYPT_COST", raising=False)
    path = tmp_path / "f"
    assert passwd_main([str(path), "carol"], io.StringIO("pw\n"), io.StringIO()) == 0
    assert parse_htpasswd(path)["carol"].startswith(b"$2b$12$")
