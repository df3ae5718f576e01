"""
Where the server reaches into treq's private parts: a L{StubTreq} serves
through the server's own site.  tests/app/compat/test_klein_and_treq.py
fails, saying what moved, when a treq release changes it.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.web.iweb import IAgent
from twisted.web.server import Site


def serve_through(client: StubTreq, site: Site) -> None:
    """
    Make C{client} serve its requests through C{site} instead of the plain
    twisted.web Site that it wraps its resource in
    (C{StubTreq._agent._serverFactory}).
    """
    client._agent._serverFactory = site


def undecoded_agent(client: StubTreq) -> IAgent:
    """
    The agent under C{client} (C{StubTreq._agent}), which sends the headers
    it is given as they are: C{client} itself asks for gzip on every request
    and hands back the body decompressed.
    """
    agent: IAgent = client._agent
    return agent
