"""
The session store: twisted.web's C{Session} with the server's cookie, a
bounded store (a segmented LRU: probation, then protected) swept by one
timer; and the mark of a route that never uses its session.
"""

from app.sessions.store import (
    COOKIE_NAME,
    SECURE_COOKIE_NAME,
    Session,
    SessionlessRoute,
    SessionStore,
    SessionSweep,
    forget_session,
    new_uid,
    request_session,
    sessionless,
)

__all__ = [
    "COOKIE_NAME",
    "SECURE_COOKIE_NAME",
    "Session",
    "SessionStore",
    "SessionSweep",
    "SessionlessRoute",
    "forget_session",
    "new_uid",
    "request_session",
    "sessionless",
]
