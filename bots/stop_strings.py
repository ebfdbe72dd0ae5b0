"""Cutting a streamed reply at the first stop string (the API's ``stop`` parameter).

    cutter = StopCutter(["\\n\\n", "User:"])
    for piece in stream:
        text = cutter.feed(piece)     # what may be shown now
        if cutter.stopped: break      # close the stream: generation stops early
    text = cutter.finish()            # what was held back, when no stop string came

Text that could be the start of a stop string is held back until the next piece shows
whether it is one, so a client never receives part of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopCutter:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._pending = ""

    def feed(self, piece: str) -> str:
        """Text that can be emitted after ``piece``; '' once stopped."""
        if self.stopped:
            return ""
        text = self._pending + piece
        cut = min((index for stop in self.stops if (index := text.find(stop)) >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._pending = True, ""
            return text[:cut]
        keep = self._open_tail(text)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """The held-back text once the reply ended without a stop string."""
        rest, self._pending = self._pending, ""
        return "" if self.stopped else rest

    def _open_tail(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
