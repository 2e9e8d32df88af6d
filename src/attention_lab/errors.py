"""The one base class of a user's mistake.

Every error that a user can cause with a setting, a path or a file (a bad value, a missing corpus, a corrupt
checkpoint) derives from `UserError`. Its message names the setting and the fix. The command-line entry points
print it in one or two lines, without a traceback, and exit with `USAGE_EXIT` (2); anything else is a
programming error and keeps its traceback.
"""

from __future__ import annotations

USAGE_EXIT = 2  # the conventional exit status of a usage error (argparse uses it too)


class UserError(ValueError):
    """A mistake in what the user asked for; the message says which setting and how to fix it."""
