"""This project's API server on the tiny test model, as its own process: the engine of the remote-backend tests.

    python -m tests.api_engine --port 8123 --adapters DIR     # DIR/<domain>/ holds tiny adapters

It serves exactly what ``python -m bots.api`` serves (variants and raw models), built on
the same tiny model the tests build in-process (seeded, so both have the same weights).
TOP_API_KEY, if set, is required from clients as with the real server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bots.api import ApiConfig, ApiService, serve
from bots.registry import Runtime
from tests.tiny_model import make_tiny_base


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.api_engine")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--adapters", type=Path, required=True)
    args = parser.parse_args()
    runtime = Runtime.from_base(make_tiny_base(), args.adapters)
    serve(ApiService(ApiConfig.from_env(), runtime=lambda: runtime), "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
