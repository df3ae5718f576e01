"""
Static files when the process has no file descriptor left: 503 and a
retry, never a 404 for a file that exists, one log line a second at most.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from app.mounts.static import StaticDirectory


def _out_of_descriptors(*args: Any, **kwargs: Any) -> int:
    raise OSError(errno.EMFILE, "Too many open files")


def _get(resource: StaticDirectory, *segments: bytes) -> DummyRequest:
    request = DummyRequest(list(segments))
    request.channel = DummyChannel()  # type: ignore[attr-defined]  # undeclared
    request.method = b"GET"
    resource.render(request)  # type: ignore[arg-type]
    return request


@pytest.mark.parametrize("held", [True, False], ids=["root-held", "root-not-held"])
def test_a_file_that_exists_is_503_with_retry_after_when_no_descriptor_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: bool
) -> None:
    (tmp_path / "page.html").write_text("hello")
    resource = StaticDirectory(tmp_path)
    if held:
        assert _get(resource, b"page.html").responseCode in (None, 200)
    monkeypatch.setattr(os, "open", _out_of_descriptors)
    request = _get(resource, b"page.html")
    assert request.responseCode == 503
    assert request.responseHeaders.getRawHeaders(b"retry-after") == [b"1"]
    monkeypatch.undo()
    assert _get(resource, b"page.html").responseCode in (None, 200)


def test_running_out_is_logged_once_a_second_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured_log: list[LogEvent]
) -> None:
    (tmp_path / "page.html").write_text("hello")
    clock = Clock()
    resource = StaticDirectory(tmp_path, seconds=clock.seconds)
    monkeypatch.setattr(os, "open", _out_of_descriptors)
    for _ in range(5):
        _get(resource, b"page.html")
    clock.advance(1)
    _get(resource, b"page.html")
    lines = [e for e in captured_log if "Out of file descriptors" in formatEvent(e)]
    assert len(lines) == 2
