"""
--metrics: Prometheus metrics of the site, served on their own endpoint.
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
from types import SimpleNamespace
from typing import Any, cast

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport

from app.cli.main import main
from app.cli.options import config_from_args
from app.http.metrics import UNMATCHED, MetricsSite, SiteMetrics
from app.http.site import Site
from app.site import build_site
from app.testing import stub_treq
from tests.conftest import listening_url, start_app, success_result_of

BASE = "http://example.invalid"
METRICS = ["--metrics", "tcp:0:interface=127.0.0.1"]
METRICS_LISTENING = re.compile(r"metrics listening on (http://[^/\s]+/)")


def _site(*args: str) -> Site:
    return build_site(config_from_args([*METRICS, *args]), MemoryReactor(), Clock())


def _metrics(site: Site) -> SiteMetrics:
    assert site.metrics is not None
    return site.metrics


def _fetch(client: StubTreq, method: str, path: str) -> Any:
    # StubTreq sets its methods at run time.
    pending = client.request(method, BASE + path)  # type: ignore[attr-defined]
    response = success_result_of(pending)
    success_result_of(response.content())
    return response


def _samples(text: bytes | str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """
    Every sample of Prometheus text, by name and labels.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(text: bytes | str, name: str, **labels: str) -> float | None:
    return _samples(text).get((name, frozenset(labels.items())))


def _requests(text: bytes | str) -> dict[tuple[str, str, str], float]:
    return {
        (labels["route"], labels["method"], labels["status"]): value
        for (name, label_set), value in _samples(text).items()
        if name == "http_requests_total"
        for labels in [dict(label_set)]
    }


def test_no_metrics_without_the_option() -> None:
    site = build_site(config_from_args([]), MemoryReactor(), Clock())
    assert site.metrics is None


def test_requests_are_counted_by_route_template_method_and_status() -> None:
    site = _site()
    client = stub_treq(site)
    _fetch(client, "GET", "/health")
    _fetch(client, "GET", "/health")
    _fetch(client, "HEAD", "/health")
    _fetch(client, "GET", "/calendar/2024")
    _fetch(client, "GET", "/calendar/1999")
    _fetch(client, "GET", "/static/")
    _fetch(client, "GET", "/no/such/page")
    _fetch(client, "POST", "/health")
    assert _requests(_metrics(site).text()) == {
        ("/health", "GET", "200"): 2,
        ("/health", "HEAD", "200"): 1,
        ("/calendar/<int:year>", "GET", "200"): 2,
        ("/static/", "GET", "200"): 1,
        (UNMATCHED, "GET", "404"): 1,
        (UNMATCHED, "POST", "405"): 1,
    }


def test_a_mount_is_counted_by_its_prefix(tmp_path: Any) -> None:
    (tmp_path / "a.txt").write_text("a")
    site = _site("--mount", f"docs={tmp_path}")
    client = stub_treq(site)
    _fetch(client, "GET", "/docs/a.txt")
    _fetch(client, "GET", "/docs/missing.txt")
    requests = _requests(_metrics(site).text())
    assert requests == {("/docs/", "GET", "200"): 1, ("/docs/", "GET", "404"): 1}


def test_each_request_is_timed_by_route() -> None:
    site = _site()
    client = stub_treq(site)
    for _ in range(3):
        _fetch(client, "GET", "/health")
    text = _metrics(site).text()
    count = _value(text, "http_request_duration_seconds_count", route="/health")
    assert count == 3
    infinite = _value(
        text, "http_request_duration_seconds_bucket", route="/health", le="+Inf"
    )
    assert infinite == 3


def test_live_sessions_are_read_when_scraped() -> None:
    site = _site()
    metrics = _metrics(site)
    assert _value(metrics.text(), "http_live_sessions") == 0
    for _ in range(3):
        _fetch(stub_treq(site), "GET", "/session")
    assert len(site.held_sessions) == 3
    assert _value(metrics.text(), "http_live_sessions") == 3


def test_live_sessions_of_a_sqlite_store_are_the_files(tmp_path: Any) -> None:
    clock = Clock()
    config = config_from_args([*METRICS, "--sessions", f"sqlite:{tmp_path}/s.db"])
    site, other = (build_site(config, MemoryReactor(), clock) for _ in range(2))
    for each in (site, other):
        each.service.startService()
    try:
        assert _value(_metrics(site).text(), "http_live_sessions") == 0
        for each in (site, other, other):
            client = stub_treq(each)
            pending = client.get(BASE + "/session")  # type: ignore[attr-defined]
            clock.advance(0)  # the turn's saves
            client.flush()
            assert success_result_of(pending).code == 200
        # Each process reads the file's count, its own sessions and the
        # other's alike.
        for each in (site, other):
            assert _value(_metrics(each).text(), "http_live_sessions") == 3
        assert len(site.held_sessions) == 0
    finally:
        for each in (site, other):
            each.service.stopService()


def test_open_connections_are_read_when_scraped() -> None:
    site = _site()
    metrics = _metrics(site)
    before = _value(metrics.text(), "http_open_connections")
    channels = [site.buildProtocol(None) for _ in range(2)]
    for channel in channels:
        channel.makeConnection(StringTransport())
    assert _value(metrics.text(), "http_open_connections") == (before or 0) + 2
    channels[0].transport.loseConnection()  # type: ignore[union-attr]
    channels[0].connectionLost(None)  # type: ignore[arg-type]
    assert _value(metrics.text(), "http_open_connections") == (before or 0) + 1


def test_queue_depths_of_cgi_wsgi_and_bcrypt_are_reported() -> None:
    site = _site("--htpasswd", "app/demo/users.htpasswd")
    text = _metrics(site).text()
    for queue in ("cgi", "wsgi", "bcrypt"):
        assert _value(text, "http_queue_depth", queue=queue) == 0


def test_a_queue_depth_is_read_at_each_scrape() -> None:
    site = _site("--no-demo")
    metrics = _metrics(site)
    depth = [0]
    metrics.add_queue("test", lambda: depth[0])
    depth[0] = 7
    assert _value(metrics.text(), "http_queue_depth", queue="test") == 7


def test_the_channels_refusals_are_counted_by_status() -> None:
    site = _site("--no-demo")
    for data in (
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ):
        channel = site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        channel.dataReceived(data)
    text = _metrics(site).text()
    assert _value(text, "http_refused_requests_total", reason="400") == 2
    assert _requests(text) == {}


def test_a_503_of_a_busy_mount_is_a_refusal_for_its_queue() -> None:
    site = _site("--no-demo")
    metrics = _metrics(site)
    metrics.add_queue("cgi", lambda: 64, "/cgi-bin/")
    for route in ("/cgi-bin/", "/health"):
        answered = SimpleNamespace(method=b"GET", code=503, route=route)
        metrics.request_done(cast(Any, answered))
    text = metrics.text()
    assert _value(text, "http_refused_requests_total", reason="cgi_busy") == 1
    assert _requests(text)[("/cgi-bin/", "GET", "503")] == 1


def test_metrics_are_not_served_on_the_site() -> None:
    site = _site()
    response = _fetch(stub_treq(site), "GET", "/metrics")
    assert response.code == 404
    assert _requests(_metrics(site).text()) == {(UNMATCHED, "GET", "404"): 1}


def test_the_metrics_site_serves_metrics_at_metrics_only() -> None:
    site = _site()
    _fetch(stub_treq(site), "GET", "/health")
    scraper = StubTreq(MetricsSite(_metrics(site).registry, Clock()).resource)
    response = _fetch(scraper, "GET", "/metrics")
    assert response.code == 200
    [content_type] = response.headers.getRawHeaders("content-type")
    assert content_type.startswith("text/plain; version=")
    text = success_result_of(response.text())
    assert _requests(text) == {("/health", "GET", "200"): 1}
    assert _fetch(scraper, "GET", "/").code == 404
    assert _fetch(scraper, "GET", "/health").code == 404


@pytest.mark.parametrize("value", ["bogus:9100", "tcp:notaport", "unix:"])
def test_a_bad_metrics_value_exits_2_naming_the_option(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(["--metrics", value], reactor, stdout=stdout, stderr=stderr)
    err = stderr.getvalue() + capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1, err
    assert "--metrics" in err
    assert "Traceback" not in err


def _metrics_url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        found = METRICS_LISTENING.search(line)
        if found:
            return found.group(1)
    raise AssertionError("no metrics listening line")


@pytest_twisted.ensureDeferred
async def test_one_scrape_counts_the_requests_of_every_worker(
    spawn: list[subprocess.Popen[str]],
) -> None:
    process = start_app(
        spawn,
        "--workers",
        "2",
        *METRICS,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--no-demo",
        "--routes",
        "tests.example_routes",
    )
    url = listening_url(process)
    metrics_url = _metrics_url(process)
    assert metrics_url != url
    assert (await treq.get(url + "metrics", persistent=False)).code == 404

    # One connection each: the kernel spreads them over both workers (once
    # the second listens too).
    pids: set[str] = set()
    sent = 1
    while len(pids) < 2 or sent < 50:
        response = await treq.get(url + "pid", persistent=False)
        pids.add(await response.text())
        sent += 1
        assert sent < 2000, "one worker served every connection"

    response = await treq.get(metrics_url + "metrics", persistent=False)
    assert response.code == 200
    text = await response.text()
    requests = _requests(text)
    assert requests == {("/pid", "GET", "200"): sent - 1, (UNMATCHED, "GET", "404"): 1}
    assert _value(text, "http_request_duration_seconds_count", route="/pid") == (
        sent - 1
    )

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
