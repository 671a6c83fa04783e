"""The one exception type for bad input from a user (a file, a number, a name, a request).

Raised where input enters; the command line prints its message as one line and exits with status 2, the
server answers 4xx with it. Anything else that goes wrong is a bug and keeps its traceback. It is a
ValueError, so code that catches ValueError keeps working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message says what is wrong and what to do."""
