"""
Where the tests find the repository and their data, wherever a test module
sits below tests/.
"""

from pathlib import Path

#: The tests/ directory.
TESTS = Path(__file__).resolve().parent
#: The repository's root.
ROOT = TESTS.parent
