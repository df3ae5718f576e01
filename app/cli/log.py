"""
The server's own log, on standard output, as text or as JSON lines.

Twisted's legacy log messages (C{Site starting on 8080}, C{(TCP Port 8080
Closed)}), which its ports still write with C{log.msg}, are left out, and so
is the reactor's C{Main loop terminated.}: the server says itself where it
listens and when it stops.  A legacy error keeps its place, under the
namespace C{twisted}.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import provider

LOG_FORMATS = ("text", "json")
#: C{--log-level}'s names of twisted's levels, least severe first.
LOG_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
_LEGACY = "log_legacy"
#: Namespaces whose info events are start and stop chatter.
_CHATTY = (
    "twisted.internet.base",
    # The Redis session store's connections retrying, a line per attempt and
    # connection: the store says once that it cannot be reached instead.
    "twisted.application._client_service",
)


def text_observer(stream: IO[str]) -> ILogObserver:
    """
    One line per event: ISO time, C{[namespace#level]}, the message, and the
    traceback below it when the event carries a failure.
    """

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        text = eventAsText(
            event,
            includeTimestamp=False,
            includeSystem=False,
            includeTraceback=True,
        ).rstrip("\n")
        stamp = _timestamp(event)
        namespace = event.get("log_namespace", "-")
        level = _level_name(event)
        line = f"{stamp} [{namespace}#{level}] {text}\n"
        # A lone surrogate (a non-UTF-8 file name, say) would make the write
        # raise and the event be lost: show it escaped instead.
        stream.write(line.encode("utf-8", "backslashreplace").decode("utf-8"))
        stream.flush()

    return observe  # type: ignore[no-any-return]


def json_observer(stream: IO[str]) -> ILogObserver:
    """
    One JSON object per line with C{time}, C{level}, C{namespace}, C{text}
    (the formatted message, not the template) and C{failure} when there is
    one.  twisted's own C{jsonFileLogObserver} writes the template instead.
    """

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        record: dict[str, str] = {
            "time": _timestamp(event),
            "level": _level_name(event),
            "namespace": str(event.get("log_namespace", "-")),
            "text": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["failure"] = failure.getTraceback()
        # ASCII escapes keep every line writable, whatever the stream's
        # encoding and whatever a message holds (lone surrogates included).
        stream.write(json.dumps(record) + "\n")
        stream.flush()

    return observe  # type: ignore[no-any-return]


def without_legacy(observer: ILogObserver) -> ILogObserver:
    """
    C{observer} without twisted's legacy messages; a legacy error is passed
    on under the namespace C{twisted}.
    """

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") != _LEGACY:
            observer(event)
        elif event.get("isError") or event.get("log_failure") is not None:
            observer({**event, "log_namespace": "twisted"})

    return observe  # type: ignore[no-any-return]


def make_observer(
    log_format: str, stream: IO[str], log_level: str = "info"
) -> ILogObserver:
    """
    The observer for C{log_format}, passing events at C{log_level} and above
    (and twisted's start and stop chatter at none).
    """
    observer = json_observer(stream) if log_format == "json" else text_observer(stream)
    level = LOG_LEVELS[log_level]
    levels = list(LOG_LEVELS.values())
    quiet = levels[max(levels.index(level), levels.index(LogLevel.warn))]
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    for namespace in _CHATTY:
        predicate.setLogLevelForNamespace(namespace, quiet)
    return without_legacy(FilteringLogObserver(observer, [predicate]))


def start_logging(log_format: str, stream: IO[str], log_level: str = "info") -> None:
    """
    Send the global log (twisted's and ours) to C{stream}.
    """
    globalLogBeginner.beginLoggingTo(
        [make_observer(log_format, stream, log_level)], redirectStandardIO=False
    )


def _timestamp(event: LogEvent) -> str:
    when = event.get("log_time")
    moment = (
        datetime.fromtimestamp(when, UTC) if when is not None else datetime.now(UTC)
    )
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _level_name(event: LogEvent) -> str:
    level = event.get("log_level")
    return level.name if isinstance(level, type(LogLevel.info)) else "info"
