"""
The listen backlog and the open-files limit the command line sets up.
"""

from __future__ import annotations

import http.client
import resource
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.cli.main import BACKLOG, with_backlog, within_descriptor_limit
from app.config import Config
from tests.conftest import listening_url, start_app


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


def test_a_flood_of_idle_connections_under_a_low_descriptor_limit_breaks_nothing(
    tmp_path: Path, spawn: list[subprocess.Popen[str]]
) -> None:
    # A server allowed 128 open files: its connections stop 64 short of
    # that, so the clients it has keep getting their files and scripts.
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<p>here</p>")
    server = start_app(
        spawn,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--static",
        str(static),
        prelude="import resource;"
        " resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))",
    )
    flood: list[socket.socket] = []
    logged: list[str] = []
    try:
        port = urlsplit(listening_url(server, logged)).port
        assert port is not None
        keep = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        keep.request("GET", "/health")
        assert keep.getresponse().read() == b"ok"
        for _ in range(200):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for path in ("/static/index.html", "/cgi-bin/env.py", "/health"):
            keep.request("GET", path)
            response = keep.getresponse()
            response.read()
            assert response.status == 200, path
        # The idle ones the server took, and those that waited in the
        # backlog, go: a new client is taken again.
        for sock in flood:
            sock.close()
        fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        fresh.request("GET", "/static/index.html")
        assert fresh.getresponse().status == 200
    finally:
        for sock in flood:
            sock.close()
        server.terminate()
        out, err = server.communicate(timeout=20)
    output = "".join(logged) + out + err
    assert "Traceback" not in output
    assert "is more than 64 open files allow; using 64" in output
