"""
The listen backlog and the open-files limit the command line sets up.
"""

from __future__ import annotations

import resource

import pytest

from app.cli.main import BACKLOG, with_backlog, within_descriptor_limit
from app.config import Config


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8080", f"tcp:8080:backlog={BACKLOG}"),
        (
            "tcp:8080:interface=127.0.0.1",
            f"tcp:8080:interface=127.0.0.1:backlog={BACKLOG}",
        ),
        ("ssl:8443:privateKey=k.pem", f"ssl:8443:privateKey=k.pem:backlog={BACKLOG}"),
        ("unix:/run/app.sock", f"unix:/run/app.sock:backlog={BACKLOG}"),
        ("tcp:8080:backlog=5", "tcp:8080:backlog=5"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_an_endpoint_gets_a_backlog_of_511_unless_it_names_one(
    description: str, expected: str
) -> None:
    assert with_backlog(description) == expected


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = [(256, 4096)]
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits[-1])
    monkeypatch.setattr(
        resource, "setrlimit", lambda which, values: limits.append(values)
    )
    config = within_descriptor_limit(Config(max_connections=1024))
    assert limits[-1] == (4096, 4096)
    assert config.max_connections == 1024


def test_max_connections_stays_below_what_open_files_allow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(which: int, values: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (200, 200))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    config = within_descriptor_limit(Config(max_connections=1024))
    assert config.max_connections == 200 - 64
