"""What every command shares: a user's mistake becomes one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

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


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing the usage and exiting: every mistake is one line,
    and `run_command` turns it into exit status 2 like any other user error."""

    def error(self, message: str) -> NoReturn:
        # "argument --top-k: --top-k must be ..." -> "--top-k must be ..." (our type functions name the flag)
        match = re.fullmatch(r"argument (\S+): (.*)", message, flags=re.DOTALL)
        if match and match[2].startswith(match[1]):
            raise UserError(match[2])
        if match:
            message = f"{match[1]}: {match[2]}"
        raise UserError(f"{message} (see {self.prog} --help)")
