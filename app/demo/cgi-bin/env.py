#!/usr/bin/env python3
"""
A CGI script that answers with the environment it was run with.
"""

import os
import sys


def environment() -> dict[bytes, bytes]:
    # As the server passed it: Python adds LC_CTYPE to os.environ at start-up
    # when no locale is set (PEP 538), which the script was not given.
    try:
        with open("/proc/self/environ", "rb") as initial:
            items = [item.partition(b"=") for item in initial.read().split(b"\0")]
        return {name: value for name, _, value in items if name}
    except OSError:
        return dict(os.environb)


lines = [name + b"=" + value for name, value in sorted(environment().items())]
sys.stdout.buffer.write(b"Content-Type: text/plain; charset=utf-8\r\n\r\n")
sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
