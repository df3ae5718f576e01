"""
The limits of the HTTP layer: sizes, times, and the names it answers with.
"""

import errno
from typing import TypeGuard

SERVER_NAME = b"app"


#: Longest request line accepted (Apache's LimitRequestLine).
MAX_REQUEST_LINE = 8190
#: Largest header block accepted, request line included.
MAX_HEADER_BYTES = 16384
#: Most header lines accepted (Apache's LimitRequestFields).
MAX_HEADER_COUNT = 100
#: How long, and how many bytes, a refused request's body is read and dropped.
DRAIN_SECONDS = 2.0
DRAIN_BYTES = 16 * 1024 * 1024
#: Bytes read but not parsed while a response is produced, before the
#: connection is no longer read.
READ_AHEAD = 64 * 1024
#: A body of known length up to this size is kept in memory.
MEMORY_BODY = 100_000
#: What C{OPTIONS *} answers the server takes.
ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
#: Bytes a second a request body must average, past the idle timeout it
#: is allowed anyway (Apache's RequestReadTimeout body=...,MinRate=500).
MIN_BODY_RATE = 500

#: What the system says when the process (EMFILE) or the whole system
#: (ENFILE) has no file descriptor left.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def out_of_descriptors(error: BaseException | None) -> TypeGuard[OSError]:
    """
    Whether C{error} says there is no file descriptor left: the answer is
    then 503, never a 404 or a 500.
    """
    return isinstance(error, OSError) and error.errno in OUT_OF_DESCRIPTORS
