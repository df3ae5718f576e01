"""
REDbot, mnot's HTTP linter, finds nothing bad and nothing to warn of in a
compressed page or a precompressed static file.

REDbot runs from an environment of its own (.venv-redbot/, made here when
missing), never the project's dependencies.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import drain, listening_url, start_app
from tests.paths import ROOT

REDBOT_ENVIRONMENT = ROOT / ".venv-redbot"
REDBOT = REDBOT_ENVIRONMENT / "bin" / "redbot"
REDBOT_VERSIONS = "redbot>=2.7,<3"


@pytest.fixture(scope="module")
def redbot() -> Path:
    if not REDBOT.exists():
        venv.create(REDBOT_ENVIRONMENT, with_pip=True)
        subprocess.run(
            [REDBOT_ENVIRONMENT / "bin" / "pip", "install", "--quiet", REDBOT_VERSIONS],
            check=True,
        )
    return REDBOT


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    static = tmp_path_factory.mktemp("static")
    stylesheet = b"body { color: #333; margin: 0 auto; }\n" * 100
    (static / "site.css").write_bytes(stylesheet)
    (static / "site.css.gz").write_bytes(gzip.compress(stylesheet))
    started: list[subprocess.Popen[str]] = []
    server = start_app(
        started, "--listen", "tcp:0:interface=127.0.0.1", "--static", str(static)
    )
    try:
        url = listening_url(server)
        drain(server, [])
        yield url.rstrip("/")
    finally:
        server.terminate()
        server.wait(timeout=20)


def _complaints(redbot: Path, url: str) -> list[str]:
    report = subprocess.run(
        [redbot, "-o", "har", url], capture_output=True, text=True, timeout=60
    )
    assert report.returncode == 0, report.stderr
    entries = json.loads(report.stdout)["log"]["entries"]
    assert entries, "REDbot checked nothing"
    return [
        f"{note['level']} {note['note_id']}: {note['summary']}"
        for entry in entries
        for note in entry.get("_red_messages", [])
        if note["level"] in ("BAD", "WARN")
    ]


@pytest.mark.parametrize(
    "path",
    ["/", "/calendar/2026", "/static/site.css", "/nowhere"],
    ids=["index", "compressed-page", "precompressed-file", "error-page"],
)
def test_redbot_finds_nothing_bad(redbot: Path, base_url: str, path: str) -> None:
    assert _complaints(redbot, base_url + path) == []
