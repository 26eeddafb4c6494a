"""The one exception type for bad input.

Everything a user can get wrong (a path, a flag value, a corrupt image, weights that do not fit) raises
``RD3Error`` with a message that names the file or flag and what was expected. The CLIs catch it, print
one line and exit with status 2; library users get an ordinary ``ValueError`` subclass.
"""
from __future__ import annotations


class RD3Error(ValueError):
    """Bad input: the message names the offending file/flag and what was expected."""
