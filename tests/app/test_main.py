"""
The two ways to start the server, C{klein-server} and C{python -m app}, run
for real from a folder of the user's that holds modules named like the
server's own packages (C{app.py}, C{auth/}, C{routes.py}).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
import treq

from tests.conftest import COMMAND, listening_url, start_app

LISTEN = ("--listen", "tcp:0:interface=127.0.0.1")

#: A WSGI application, as a user's app.py or mysite.py holds one.
USER_WSGI = """\
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the user's application"]
"""

#: A route module, as a user's myroutes.py holds one.
USER_ROUTES = """\
from klein import Klein

app = Klein()


@app.route("/mine")
def mine(request):
    return "the user's route"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """
    A user's folder: their own app.py, auth/ package and routes.py, beside
    mysite.py and myroutes.py.
    """
    (tmp_path / "app.py").write_text(USER_WSGI)
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "__init__.py").write_text("REALM = 'mine'\n")
    (tmp_path / "routes.py").write_text(USER_ROUTES)
    (tmp_path / "mysite.py").write_text(USER_WSGI)
    (tmp_path / "myroutes.py").write_text(USER_ROUTES)
    return tmp_path


def _refused(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = process.communicate(timeout=30)
    return process.returncode, err


@pytest.mark.parametrize(
    ("argv", "option", "name"),
    [
        (["--wsgi", "app:application"], "--wsgi", "app"),
        (["--wsgi", "/=app:application"], "--wsgi", "app"),
        (["--routes", "auth"], "--routes", "auth"),
        (["--routes", "routes"], "--routes", "routes"),
    ],
)
def test_a_user_module_named_like_a_server_package_is_exit_2(
    spawn: list[subprocess.Popen[str]],
    folder: Path,
    argv: list[str],
    option: str,
    name: str,
) -> None:
    process = start_app(spawn, *LISTEN, *argv, program=COMMAND, cwd=folder)
    status, err = _refused(process)
    assert status == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"klein-server: error: {option}: ")
    assert f"the server's own package {name!r}" in err
    assert str(folder / name) in err
    assert "Traceback" not in err


def test_python_m_app_names_the_clash_too(
    spawn: list[subprocess.Popen[str]], folder: Path
) -> None:
    (folder / "app.py").unlink()  # or Python would run it instead
    process = start_app(spawn, *LISTEN, "--routes", "auth", cwd=folder)
    status, err = _refused(process)
    assert status == 2
    assert err.startswith("python -m app: error: --routes: ")
    assert "the server's own package 'auth'" in err


@pytest_twisted.ensureDeferred
async def test_command_serves_user_modules_from_the_working_directory(
    spawn: list[subprocess.Popen[str]], folder: Path
) -> None:
    process = start_app(
        spawn,
        *LISTEN,
        "--wsgi",
        "mysite:application",
        "--routes",
        "myroutes",
        program=COMMAND,
        cwd=folder,
    )
    url = listening_url(process)
    mine = await treq.get(url + "mine", persistent=False)
    assert await mine.text() == "the user's route"
    wsgi = await treq.get(url + "wsgi/", persistent=False)
    assert await wsgi.text() == "the user's application"
    # The server's own auth, not the folder's, guards nothing here: /private/
    # is the server's 404, and the demo is whole.
    assert (await treq.get(url + "clock", persistent=False)).code == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


@pytest_twisted.ensureDeferred
async def test_python_m_app_beside_a_user_auth_and_routes_serves(
    spawn: list[subprocess.Popen[str]], folder: Path
) -> None:
    (folder / "app.py").unlink()
    process = start_app(spawn, *LISTEN, "--routes", "myroutes", cwd=folder)
    url = listening_url(process)
    assert (await treq.get(url + "health", persistent=False)).code == 200
    mine = await treq.get(url + "mine", persistent=False)
    assert await mine.text() == "the user's route"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


@pytest_twisted.ensureDeferred
async def test_workers_never_run_the_users_app_py(
    spawn: list[subprocess.Popen[str]], folder: Path
) -> None:
    process = start_app(
        spawn,
        *LISTEN,
        "--workers",
        "2",
        "--routes",
        "myroutes",
        program=COMMAND,
        cwd=folder,
    )
    url = listening_url(process)
    for _ in range(4):
        mine = await treq.get(url + "mine", persistent=False)
        assert await mine.text() == "the user's route"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_command_help_names_itself(spawn: list[subprocess.Popen[str]]) -> None:
    process = start_app(spawn, "--help", program=COMMAND)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out.startswith("usage: klein-server ")
    assert "[PREFIX=]MODULE:CALLABLE" in out
