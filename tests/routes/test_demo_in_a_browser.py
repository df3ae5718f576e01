"""
The demo in a real browser: C{python -m app}, started as C{make run} starts
it, and headless Chromium driven through its DevTools protocol over a pipe
(no port, no websocket).  The browser loads the index and every link on it;
a link that answers an unexpected status, or a page that logs an error to
the console, fails the test.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import DEMO_DIR
from tests.paths import ROOT

CHROMIUM = "chromium"
#: The demo as C{make run} serves it (the Makefile's DEMO_ARGS).
DEMO_ARGS = (
    "--htpasswd",
    str(DEMO_DIR / "users.htpasswd"),
    "--htdigest",
    str(DEMO_DIR / "users.htdigest"),
    "--homes",
    str(DEMO_DIR / "homes"),
    "--proxy",
    "self",
)
#: The links whose page is an error on purpose; every other one is 2xx or 3xx.
EXPECTED_ERRORS = {
    "/private/": 401,
    "/pay": 402,
    "/delayed/fail?seconds=1": 500,
}
#: Seconds one page may take to load (the slowest waits one second).
PAGE_TIMEOUT = 10.0


def _install_chromium() -> None:
    if shutil.which(CHROMIUM) is not None:
        return
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", CHROMIUM],
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Browser:
    """
    Headless Chromium and one page of it, spoken to in the DevTools
    protocol: JSON messages ending in a NUL byte, on descriptors 3 (to the
    browser) and 4 (from it).
    """

    def __init__(self, profile: Path) -> None:
        to_browser, self._send_fd = os.pipe()
        self._read_fd, from_browser = os.pipe()
        # Out of the way of 3 and 4, which the child's copies will take.
        child_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
        os.close(to_browser)
        os.close(from_browser)

        # A shell gives them those numbers: no preexec_fn in a threaded test run.
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec "$@" 3<&{child_in} 4>&{child_out}',
                "bash",
                CHROMIUM,
                "--headless",
                "--no-sandbox",  # tests run as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-extensions",
                "--disable-sync",
                "--no-default-browser-check",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(child_in, child_out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")
        attached = self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        # Answer every login prompt with "cancel", as a user would.
        self.call("Fetch.enable", session=True, handleAuthRequests=True)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.close(self._send_fd)
        os.close(self._read_fd)

    def call(self, method: str, session: bool = False, **params: Any) -> Any:
        """
        Send C{method} (to the page when C{session}) and return its result.
        """
        self._next_id += 1
        message: dict[str, Any] = {
            "id": self._next_id,
            "method": method,
            "params": params,
        }
        if session:
            message["sessionId"] = self._session
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")
        reply = self._receive(lambda m: m.get("id") == self._next_id, method)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def load(self, url: str) -> int:
        """
        Navigate to C{url}, wait for its load event, and return the status
        of the document's response.
        """
        del self.events[:]
        self.call("Page.navigate", session=True, url=url)
        return self.wait_for_load(url)

    def submit(self, form_selector: str) -> int:
        """
        Submit the page's form that C{form_selector} selects, as a click
        would, and return the status of the page that answers it.
        """
        del self.events[:]
        self.evaluate(f"document.querySelector({json.dumps(form_selector)}).submit()")
        return self.wait_for_load(form_selector)

    def wait_for_load(self, what: str) -> int:
        """
        Wait for the page's load event; return its document's status.
        """
        self._receive(lambda m: m.get("method") == "Page.loadEventFired", what)
        return self.document_status()

    def document_status(self) -> int:
        statuses = [
            event["params"]["response"]["status"]
            for event in self.events
            if event.get("method") == "Network.responseReceived"
            and event["params"].get("type") == "Document"
        ]
        assert statuses, "no document was received"
        status: int = statuses[-1]
        return status

    def console_errors(self, page_url: str, page_status: int) -> list[str]:
        """
        What the page logged as an error, less the line Chromium logs for
        the page's own answer when that is an error on purpose.
        """
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Log.entryAdded":
                entry = params["entry"]
                if entry["level"] != "error":
                    continue
                own = entry.get("url") == page_url and f" {page_status} " in (
                    entry["text"] + " "
                ).replace("(", " ")
                # The browser's own guess at an icon, asked of text pages.
                icon = entry.get("url", "").endswith("/favicon.ico")
                if not (own or icon):
                    errors.append(f"{entry.get('url')}: {entry['text']}")
            elif event.get("method") == "Runtime.consoleAPICalled":
                if params["type"] in ("error", "assert"):
                    errors.append(json.dumps(params["args"]))
            elif event.get("method") == "Runtime.exceptionThrown":
                errors.append(json.dumps(params["exceptionDetails"]))
        return errors

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    def _receive(self, wanted: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + PAGE_TIMEOUT
        while True:
            while b"\0" in self._buffer:
                raw, _, self._buffer = self._buffer.partition(b"\0")
                message: dict[str, Any] = json.loads(raw)
                if message.get("method") == "Fetch.authRequired":
                    self._cancel_login(message["params"]["requestId"])
                elif message.get("method") == "Fetch.requestPaused":
                    self._resume(message["params"]["requestId"])
                elif "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read_fd], [], [], left)[0]:
                raise AssertionError(f"Chromium did not answer in time: {what}")
            chunk = os.read(self._read_fd, 1 << 16)
            if not chunk:
                raise AssertionError(f"Chromium exited: {what}")
            self._buffer += chunk

    def _send_quietly(self, method: str, **params: Any) -> None:
        # A reply to this comes later and is ignored: it has an id no one waits on.
        self._next_id += 1
        message = {
            "id": self._next_id,
            "method": method,
            "params": params,
            "sessionId": self._session,
        }
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")

    def _cancel_login(self, request_id: str) -> None:
        self._send_quietly(
            "Fetch.continueWithAuth",
            requestId=request_id,
            authChallengeResponse={"response": "CancelAuth"},
        )

    def _resume(self, request_id: str) -> None:
        self._send_quietly("Fetch.continueRequest", requestId=request_id)


class DemoServer:
    """
    C{python -m app} with the demo's arguments on a port of its own.
    """

    def __init__(self) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                *DEMO_ARGS,
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = b""
        self._wait_for(rb"listening on http://127\.0\.0\.1:\d+/")

    def _wait_for(self, pattern: bytes) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + 15
        while not re.search(pattern, self.output):
            left = deadline - time.monotonic()
            chunk = os.read(fd, 65536) if select.select([fd], [], [], left)[0] else b""
            if not chunk:
                raise AssertionError(f"the server did not start: {self.output!r}")
            self.output += chunk

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoServer]:
    server = DemoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    _install_chromium()
    browser = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.close()


def _links(browser: Browser, demo: DemoServer) -> list[str]:
    assert browser.load(demo.url("/")) == 200
    hrefs: list[str] = browser.evaluate("Array.from(document.links, a => a.href)")
    own = demo.url("")
    paths = [href.removeprefix(own) for href in hrefs if href.startswith(own)]
    return list(dict.fromkeys(paths))


def test_index_loads_without_console_errors(browser: Browser, demo: DemoServer) -> None:
    assert browser.load(demo.url("/")) == 200
    assert browser.console_errors(demo.url("/"), 200) == []


def test_every_link_of_the_index_works_in_a_browser(
    browser: Browser, demo: DemoServer
) -> None:
    links = _links(browser, demo)
    assert len(links) >= 15
    broken = {}
    for path in links:
        url = demo.url(path)
        status = browser.load(url)
        wanted = EXPECTED_ERRORS.get(path)
        if (status != wanted) if wanted else not 200 <= status < 400:
            broken[path] = f"status {status}"
        elif errors := browser.console_errors(url, status):
            broken[path] = "; ".join(errors)
    assert broken == {}


def test_the_echo_form_of_the_index_posts_its_body(
    browser: Browser, demo: DemoServer
) -> None:
    assert browser.load(demo.url("/")) == 200
    assert browser.submit('form[action="/echo"]') == 200
    assert "hello" in browser.evaluate("document.body.innerText")
