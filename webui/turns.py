"""One variant answering one message in its own chat pane, and the generation-settings controls.

Shared by the Side by side, Arena and Prompt lab tabs: a PaneTurn appends the user's message
and a growing assistant message to a pane's history while the reply streams, and formats
the reply's timings. Nothing here runs by itself; the tabs call it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import gradio as gr

from bots.backbone_base import GenerationError
from bots.bot import Bot, PromptOverride, ReplyStream, VariantUnavailable
from bots.generation import GenerationSettings
from webui.common import ChatHistory, for_display, to_conversation

STREAM_INTERVAL_S = 0.0
"""Least time between two page updates of a streaming pane (0: one per piece, the default). At
0.2 s it took the page at 4 sessions from 0.50x to only 0.57x of one session, before the cause
was found in the lanes (bots/llama_backbone.py), and it makes short replies appear at once
rather than stream, so it stays off."""

TURN_ERRORS: tuple[type[Exception], ...] = (ValueError, VariantUnavailable)
"""What a bad request raises before generation starts: ConversationError and SettingsError are
ValueErrors, and so is a prompt-lab edit whose fixed prompt no longer fits the context."""


def build_settings_controls() -> list[gr.components.Component]:
    """The decoding controls, in GenerationSettings order; lay them out inside an open Blocks context."""
    defaults = GenerationSettings()
    return [
        gr.Slider(16, 512, value=defaults.max_new_tokens, step=16, label="Max new tokens"),
        gr.Slider(0.0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)"),
        gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p"),
        gr.Slider(1.0, 1.5, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty (on the reply's own tokens)"),
        gr.Number(value=defaults.seed, precision=0, minimum=0, label="Seed (matters when temperature > 0)"),
    ]


SETTINGS_COUNT = 5


def settings_from(max_new_tokens: float, temperature: float, top_p: float, repetition_penalty: float, seed: float | None) -> GenerationSettings:
    """Control values -> validated settings (raises SettingsError, a ValueError)."""
    return GenerationSettings(int(max_new_tokens), float(temperature), float(top_p), float(repetition_penalty), int(seed or 0)).validate()


def settings_record(settings: GenerationSettings) -> dict[str, object]:
    return asdict(settings)


@dataclass
class PaneTurn:
    """A reply in progress in one pane; ``history`` grows as ``stream`` yields."""

    name: str
    history: ChatHistory
    stream: ReplyStream
    failure: str = ""
    """Why generation stopped half-way, if it did (the partial reply stays)."""

    @classmethod
    def start(cls, bot: Bot, history: ChatHistory, message: str, settings: GenerationSettings, override: PromptOverride | None = None, guard: bool = True) -> PaneTurn:
        """Check and render the request (raises one of TURN_ERRORS); generation starts on iteration."""
        history = list(history or [])
        stream = bot.stream(to_conversation(history) + [{"role": "user", "content": message or ""}], settings, override, guard)
        grown = history + [{"role": "user", "content": for_display(message or "")}, {"role": "assistant", "content": ""}]
        return cls(bot.spec.name, grown, stream)

    def updates(self, interval_s: float = STREAM_INTERVAL_S) -> Iterator[ChatHistory]:
        """The pane's history as the reply streams: after the first piece, then at most every
        ``interval_s`` seconds, and once more at the end (holds the model until exhausted or closed)."""
        last_sent: float | None = None
        pending = False
        try:
            for _ in self.stream:
                pending = True
                now = time.monotonic()
                if last_sent is None or now - last_sent >= interval_s:
                    self.history[-1] = {"role": "assistant", "content": for_display(self.stream.text)}
                    last_sent, pending = now, False
                    yield self.history
        except GenerationError as exc:
            self.failure = f"generation stopped: {exc}"
        if pending:  # the pieces since the last update
            self.history[-1] = {"role": "assistant", "content": for_display(self.stream.text)}
            yield self.history

    def notes(self) -> str:
        """Context trimming, guard actions and a failure, for the user to see ('' when none)."""
        return "".join(f" · ⚠️ {note}" for note in (self.stream.notice, self.stream.guard_note, self.failure) if note)

    def stats_line(self) -> str:
        stats = self.stream.stats
        line = f"first token {stats.ttft_s:.2f} s · {stats.decode_tokens_per_s:.1f} tok/s · {stats.new_tokens} tokens"
        if stats.cached_prompt_tokens:
            line += f" · {stats.cached_prompt_tokens} of {stats.prompt_tokens} prompt tokens from the cache"
        return line + self.notes()
