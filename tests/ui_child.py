"""The whole page on the tiny test model, as a process of its own: the server of the load-test sweep test.

    python -m tests.ui_child --port 8123

It serves what tests/ui_server.py serves in-process (tiny adapters in a temporary folder,
medical-lora missing), until it is terminated.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from pathlib import Path

from tests.ui_server import serve_tiny_ui


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.ui_child")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with tempfile.TemporaryDirectory() as folder, serve_tiny_ui(Path(folder), port=args.port):
        stop.wait()


if __name__ == "__main__":
    main()
