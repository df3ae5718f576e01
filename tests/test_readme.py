"""
README's example of a route module and its test, run as README says to run
them, from a folder of the user's.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.paths import ROOT

README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    """
    The text of README's section C{title}, up to the next heading.
    """
    start = README.index(f"\n{title}\n")
    following = re.search(r"\n##+ ", README[start + 1 :])
    assert following is not None
    return README[start : start + 1 + following.start()]


def _python_file(name: str) -> str:
    """
    The Python block of README whose first line is C{# name}.
    """
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    (found,) = [block for block in blocks if block.startswith(f"# {name}\n")]
    return str(found)


def test_readme_route_test_runs_as_written(tmp_path: Path) -> None:
    for name in ("myroutes.py", "test_myroutes.py"):
        (tmp_path / name).write_text(_python_file(name))
    (command,) = re.findall(
        r"```sh\n(.*?)\n```", _section("### Testing your routes"), re.DOTALL
    )
    assert command.startswith(".venv/bin/")
    # .venv is the server's: the one running this test.
    argv = shlex.split(command.replace(".venv/bin/", f"{Path(sys.executable).parent}/"))
    run = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
