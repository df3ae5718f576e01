"""
CGI scripts: the scripts of one directory, run as RFC 3875 describes, on
twisted.web.twcgi with the parts that differ replaced.

  - L{app.mounts.cgi.resource}: the directory and the script resources.
  - L{app.mounts.cgi.settings}: what every script runs with, and how.
  - L{app.mounts.cgi.environment}: the environment of a script.
  - L{app.mounts.cgi.standard_input}: the request body, to the script.
  - L{app.mounts.cgi.headers}: the script's header block.
  - L{app.mounts.cgi.process}: one run of a script, from start to end.
  - L{app.mounts.cgi.slots}: how many scripts run at once, and the queue.
"""

from app.mounts.cgi.headers import (
    MAX_HEAD_BYTES,
    BadHead,
    Head,
    parse_head,
    resume_offset,
    split_head,
)
from app.mounts.cgi.process import MAX_STDERR_BYTES, CGIProcess, RunState
from app.mounts.cgi.resource import CGIDirectory, CGIScript, cgi_directory
from app.mounts.cgi.settings import CGISettings
from app.mounts.cgi.slots import MAX_WAITING, ScriptSlots

__all__ = [
    "MAX_HEAD_BYTES",
    "MAX_STDERR_BYTES",
    "MAX_WAITING",
    "BadHead",
    "CGIDirectory",
    "CGIProcess",
    "CGIScript",
    "CGISettings",
    "Head",
    "RunState",
    "ScriptSlots",
    "cgi_directory",
    "parse_head",
    "resume_offset",
    "split_head",
]
