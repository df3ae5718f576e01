"""
C{python -m app}: the only place that imports the global reactor.
"""

import sys

from twisted.internet import reactor

from app.cli.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], reactor))
