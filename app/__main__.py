"""
C{python -m app} and the C{klein-server} command: the only place that
imports the global reactor.

C{python -m app} puts the working directory first on C{sys.path}, where a
user's C{routes.py} or C{auth/} would take the place of the server's own
packages: it is moved last, where C{--routes} and C{--wsgi} modules are
looked for, before any of those is imported.  (A user's own C{app.py} or
C{app/} in the working directory is what Python itself runs for
C{python -m app}, before any of this: C{klein-server}, which never puts the
working directory first, is the safe way.)
"""

import os
import sys
from typing import NoReturn

if __name__ == "__main__" and sys.path[:1] in ([""], [os.getcwd()]):
    sys.path.append(sys.path.pop(0))

from twisted.internet import reactor

from app.cli.main import PROG, main

#: The name of the console script (pyproject.toml's [project.scripts]).
COMMAND = "klein-server"


def run() -> NoReturn:
    """
    The C{klein-server} command.
    """
    sys.exit(main(sys.argv[1:], reactor, prog=COMMAND))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], reactor, prog=PROG))
