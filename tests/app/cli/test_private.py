"""
The private directories a --workers parent makes: what a killed parent
leaves is removed by the next, and nothing else is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli.private import LOCK, PrivateDirectory, sweep
from tests.paths import ROOT

PREFIX = "app-test-"

_HOLDER = (
    "import sys, time\n"
    "from app.cli.private import PrivateDirectory\n"
    "directory = PrivateDirectory(sys.argv[1], sys.argv[2])\n"
    "print(directory.path, flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def _held(holders: list[subprocess.Popen[str]], where: Path) -> tuple[int, Path]:
    """
    A process of its own that made a private directory in C{where} and
    lives on: its pid and the directory.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, PREFIX, str(where)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    holders.append(process)
    assert process.stdout is not None
    return process.pid, Path(process.stdout.readline().strip())


def test_what_a_killed_parent_left_is_removed_and_nothing_else(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    killed_pid, left = _held(holders, tmp_path)
    (left / "sessions.sqlite3").write_bytes(b"x" * 4096)
    _, living = _held(holders, tmp_path)
    os.kill(killed_pid, signal.SIGKILL)
    holders[0].wait()

    # A directory with no lock file: its parent has not made it yet.
    unlocked = tmp_path / f"{PREFIX}making"
    unlocked.mkdir()
    # Another user's, with a lock no one holds (only root can make one).
    foreign = tmp_path / f"{PREFIX}foreign"
    foreign.mkdir()
    (foreign / LOCK).touch()
    if os.getuid() == 0:
        os.chown(foreign, 65534, 65534)
    else:
        foreign = unlocked
    # A link to a directory of ours, and a file, with the prefix.
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / LOCK).touch()
    (tmp_path / f"{PREFIX}link").symlink_to(target)
    (tmp_path / f"{PREFIX}file").write_text("")
    # Another kind of directory.
    other = tmp_path / "other-kind"
    other.mkdir()
    (other / LOCK).touch()

    made = PrivateDirectory(PREFIX, str(tmp_path))

    assert made.swept == [str(left)]
    assert not left.exists()
    assert living.is_dir() and (living / LOCK).exists()
    for kept in (unlocked, foreign, target / LOCK, other / LOCK):
        assert kept.exists(), kept
    assert (tmp_path / f"{PREFIX}link").is_symlink()
    assert (tmp_path / f"{PREFIX}file").is_file()
    assert oct(Path(made.path).stat().st_mode & 0o777) == "0o700"
    assert sorted(p.name for p in Path(made.path).iterdir()) == [LOCK]

    # Its own lock is held while it lives: another parent leaves it be.
    assert sweep(str(tmp_path), PREFIX) == []
    assert Path(made.path).is_dir()
    made.remove()
    assert not Path(made.path).exists()
    assert living.is_dir()


def test_a_directory_whose_parent_stopped_without_removing_it_is_swept(
    tmp_path: Path,
) -> None:
    # A parent that closed its lock (as a process that died does) but whose
    # directory is still there.
    made = PrivateDirectory(PREFIX, str(tmp_path))
    assert made._lock is not None
    os.close(made._lock)
    made._lock = None

    assert sweep(str(tmp_path), PREFIX) == [made.path]
    assert list(tmp_path.iterdir()) == []
    assert sweep(str(tmp_path / "missing"), PREFIX) == []
