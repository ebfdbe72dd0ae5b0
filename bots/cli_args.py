"""The argument parser every ``python -m ...`` entry point of the project uses.

``CommandParser`` is argparse's parser with one change: a bad argument ends with exit code 2
and one clear line on stderr (``prog: error: ... (see --help)``) instead of the usage block
followed by the error, so a user sees at once what was wrong. ``--help`` is unchanged
(full help, exit 0). Subcommand parsers inherit the behaviour. No command of its own.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_USAGE = 2


class CommandParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")
        raise SystemExit(EXIT_USAGE)
