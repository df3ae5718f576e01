"""
A L{Config} built in Python means what the command line with the same values
means: the same defaults, the same meaning of each field, the same site.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from app.cli.options import config_from_args
from app.config import DEMO_CGI, DEMO_DIR, Config, ConfigError
from app.site import build_site
from app.testing import LiveServer
from tests.paths import ROOT

HOME = DEMO_DIR / "homes" / "alice" / "public_html"
ROUTES = "tests.example_routes"
DEMO_APP = "app.demo_wsgi:application"

#: What is asked of both sites: (method, path, body).
REQUESTS = [
    ("GET", "/", b""),
    ("GET", "/health", b""),
    ("GET", "/pay", b""),
    ("GET", "/static/", b""),
    ("GET", "/static/index.html", b""),
    ("GET", "/docs/", b""),
    ("GET", "/cgi-bin/hello.py", b""),
    ("GET", "/wsgi/a", b""),
    ("GET", "/app/a", b""),
    ("GET", "/hello", b""),
    ("GET", "/nothere", b""),
    ("GET", "/private/", b""),
    ("GET", "/proxy/", b""),
    ("POST", "/echo", b"x" * 20),
]


@pytest.mark.parametrize(
    ("argv", "built"),
    [
        ([], Config()),
        (["--no-demo"], Config(demo=False)),
        (["--no-demo", "--routes", ROUTES], Config(demo=False, routes=(ROUTES,))),
        (
            ["--no-demo", "--static", str(HOME), "--cgi-dir", str(DEMO_CGI)],
            Config(demo=False, static_dir=HOME, cgi_dir=DEMO_CGI),
        ),
        (
            ["--no-demo", "--wsgi", f"app={DEMO_APP}", "--mount", f"docs={HOME}"],
            Config(demo=False, wsgi=f"app={DEMO_APP}", mounts=(("docs", HOME),)),
        ),
        (
            ["--wsgi", f"/={DEMO_APP}", "--routes", ROUTES, "--max-body", "10"],
            Config(wsgi=f"/={DEMO_APP}", routes=(ROUTES,), max_body=10),
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_config_built_in_python_serves_what_the_command_line_does(
    argv: list[str], built: Config
) -> None:
    parsed = config_from_args(argv)
    assert parsed == built
    assert await _answers(parsed) == await _answers(built)


async def _answers(config: Config) -> list[tuple[int, bytes]]:
    live = await LiveServer.start(config)
    try:
        answers = []
        for method, path, body in REQUESTS:
            response = await live.request(method, path, data=body or None)
            answers.append((response.code, await response.content()))
        return answers
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_without_the_demo_nothing_of_it_is_served() -> None:
    live = await LiveServer.start(Config(demo=False))
    try:
        for path in ("/static/", "/cgi-bin/hello.py", "/wsgi/", "/clock"):
            assert (await live.get(path)).code == 404, path
        assert (await live.get("/health")).code == 200
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_routes_names_the_modules_served() -> None:
    live = await LiveServer.start(Config(demo=False, routes=(ROUTES,)))
    try:
        response = await live.get("/hello")
        assert await response.text() == "Hello from a route module"
    finally:
        await live.stop()


def test_the_defaults_say_what_is_served() -> None:
    demo = Config()
    assert (demo.static_root, demo.cgi_root, demo.wsgi_prefix) == (
        DEMO_DIR / "static",
        DEMO_CGI,
        "wsgi",
    )
    bare = Config(demo=False)
    assert (bare.static_root, bare.cgi_root, bare.wsgi_prefix) == (None, None, None)


@pytest.mark.parametrize(
    ("fields", "option"),
    [
        ({"routes": ("no.such.module",)}, "--routes"),
        ({"wsgi": "nocolon"}, "--wsgi"),
        ({"wsgi": "a b=app.demo_wsgi:application"}, "--wsgi"),
    ],
)
def test_bad_values_are_the_command_lines_errors(
    fields: dict[str, Sequence[str] | str], option: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Config(**fields)  # type: ignore[arg-type]
    assert raised.value.option == option


@pytest.mark.parametrize("prefix", ["session", "counter/more", "static", "cgi-bin"])
def test_a_config_made_in_python_may_not_mount_over_the_servers_pages(
    prefix: str,
) -> None:
    config = Config(mounts=((prefix, ROOT),))
    with pytest.raises(ConfigError) as raised:
        build_site(config, MemoryReactor(), Clock())
    assert raised.value.option == "--mount"
    first = prefix.split("/")[0]
    assert raised.value.message == f"/{first}/ is served by the server itself"


@pytest.mark.parametrize(
    ("fields", "option", "message"),
    [
        ({"mounts": (("docs", ROOT), ("docs", ROOT))}, "--mount", "mounted twice"),
        ({"wsgi": f"counter={DEMO_APP}"}, "--wsgi", "/counter/ is served by"),
        (
            {"wsgi": f"docs/api={DEMO_APP}", "mounts": (("docs", ROOT),)},
            "--wsgi",
            "/docs/ is a --mount already",
        ),
    ],
)
def test_a_config_made_in_python_serves_no_path_twice(
    fields: dict[str, Any], option: str, message: str
) -> None:
    config = Config(**fields)
    with pytest.raises(ConfigError) as raised:
        build_site(config, MemoryReactor(), Clock())
    assert raised.value.option == option
    assert message in raised.value.message


def test_a_user_module_is_found_in_the_working_directory_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config_test_routes.py").write_text(
        "from klein import Klein\napp = Klein()\n"
    )
    monkeypatch.chdir(tmp_path)
    # As under the klein-server command: the working directory is not on it.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(ROOT))])
    config = Config(routes=("config_test_routes",))
    assert len(config.extra_apps) == 1
    assert sys.path[-1] == str(tmp_path)
