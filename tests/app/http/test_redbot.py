"""
REDbot, mnot's HTTP linter, finds nothing bad and nothing to warn of in a
compressed page or a precompressed static file.

REDbot runs from an environment of its own (.venv-redbot/, made here when
missing), never the project's dependencies.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--static",
            str(static),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", line)
            if found:
                yield found.group(1)
                break
        else:
            raise AssertionError("the server never said it was listening")
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
