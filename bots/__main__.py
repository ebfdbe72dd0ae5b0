"""Entry point of ``python -m bots``; see bots/cli.py for the commands."""

import sys

from bots.cli import main

sys.exit(main())
