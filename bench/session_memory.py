"""
`make session-memory`: the memory that one session costs in the server.

Creates sessions through the site's real store (as `request.getSession()`
does), first bare, then each with a visit counter stored in it as `/counter`
does, and reports the bytes per session that tracemalloc sees and, on Linux,
the growth of the process's resident set.

    python bench/session_memory.py [--sessions 100000]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock

from app.cli.options import config_from_args
from app.http.site import Site
from app.site import build_site
from routes.sessions import ICounter


def _site(count: int) -> tuple[Site, Clock]:
    clock = Clock()
    config = config_from_args(["--no-demo", "--max-sessions", str(count)])
    return build_site(config, None, clock), clock


def _bare(site: Site) -> None:
    site.makeSession()


def _counted(site: Site) -> None:
    ICounter(site.makeSession()).value = 1


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


#: Every site measured stays alive, so that no measurement reuses memory that
#: an earlier one freed.
_KEPT: list[Site] = []


def _traced(count: int, make: Callable[[Site], None]) -> float:
    site, clock = _site(count)
    _KEPT.append(site)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(count):
        make(site)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(site.sessions) == count
    assert len(clock.getDelayedCalls()) == 1, "one sweep timer for all sessions"
    return (after - before) / count


def _resident(count: int, make: Callable[[Site], None]) -> float | None:
    site, _ = _site(count)
    _KEPT.append(site)
    gc.collect()
    before = _rss()
    for _ in range(count):
        make(site)
    gc.collect()
    after = _rss()
    if before is None or after is None:
        return None
    return (after - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    count: int = parser.parse_args().sessions

    print(f"{count} sessions, bytes per session:")
    for name, make in (("bare", _bare), ("with a counter", _counted)):
        resident = _resident(count, make)
        traced = _traced(count, make)
        rss = "n/a" if resident is None else f"{resident:.0f}"
        print(f"  {name:<15} traced {traced:.0f}, resident set {rss}")


if __name__ == "__main__":
    main()
