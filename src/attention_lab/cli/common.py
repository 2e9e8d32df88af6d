"""What every command shares: a user's mistake becomes one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from ..errors import USAGE_EXIT, UserError


def report_user_error(err: UserError) -> int:
    """Print the message (it names the setting and the fix) without a traceback; return the usage status."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    return USAGE_EXIT


def run_command(command: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run `command(argv)`: UserError -> message and status 2; any other exception keeps its traceback."""
    try:
        return command(argv)
    except UserError as err:
        return report_user_error(err)
