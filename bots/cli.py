"""Command-line interface to the variants (a stable interface: keep it working).

    python -m bots list
    python -m bots ask --variant ecommerce-prompt "Do you ship to Canada?"
    python -m bots batch --variant medical-lora --input in.jsonl --output out.jsonl

``batch`` reads lines ``{"id": ..., "messages": [...]}`` and writes, per line, the same id
plus ``reply``, ``latency_s``, ``ttft_s``, ``new_tokens`` (and ``error`` for a line that
could not be answered). Decoding is greedy by default, so results are reproducible.
Card-like numbers and CVVs are masked (bots.safety.mask_card_numbers) in everything the CLI
prints or writes: a reply may repeat the card number a user typed.
Global options: ``--base-model`` (``embedded``, a hub id or a local folder) and
``--adapters-dir``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from bots.backbone_base import GenerationError
from bots.backends import BACKEND_NAMES
from bots.base_source import BaseModelError, BaseModelSpec
from bots.bot import VariantUnavailable
from bots.cli_args import CommandParser
from bots.conversation import ConversationError
from bots.generation import GenerationSettings, SettingsError
from bots.registry import VARIANTS, Runtime, UnknownVariant, get_runtime
from bots.safety import mask_card_numbers

EXIT_USAGE = 2
# The end of a text that more text could still turn into (part of) a card number or a CVV:
# a run of digits, spaces and dashes with a digit in it.
_OPEN_DIGITS = re.compile(r"[\d -]*\d[\d -]*$")


class BatchInputError(ValueError):
    """A batch input line is not usable; the message names the line."""


def make_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m bots", description="Chat with the Tune or Prompt variants.")
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder; env TOP_BASE_MODEL")
    parser.add_argument("--adapters-dir", type=Path, default=None, help="folder with <domain>/ adapters; env TOP_ADAPTERS_DIR")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default=None, help="serving backend (default auto: the fastest installed); env TOP_BACKEND")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="variants, their availability and the base model")

    def add_generation_options(sub: argparse.ArgumentParser, max_new_tokens: int) -> None:
        sub.add_argument("--variant", required=True, choices=list(VARIANTS))
        sub.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        sub.add_argument("--top-p", type=float, default=0.95)
        sub.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
        sub.add_argument("--seed", type=int, default=0)

    ask = commands.add_parser("ask", help="stream one reply")
    add_generation_options(ask, 200)
    ask.add_argument("question")
    batch = commands.add_parser("batch", help="answer a JSONL file of conversations")
    add_generation_options(batch, 200)
    batch.add_argument("--input", type=Path, required=True)
    batch.add_argument("--output", type=Path, required=True)
    return parser


def settings_from(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed).validate()


def command_list(runtime: Runtime, out: TextIO) -> int:
    base = runtime.backbone.base
    out.write(f"base model: {base.name} (sha256 {base.fingerprint[:12]}, loaded in {base.load_seconds:.1f}s, backend {runtime.backbone.backend})\n")
    for name, bot in runtime.bots.items():
        status = "available" if bot.availability.ok else f"unavailable: {bot.availability.reason}"
        out.write(f"{name:18} {bot.spec.method:7} {status}\n")
    return 0


def masked_pieces(pieces: Iterable[str]) -> Iterator[str]:
    """Stream text with card numbers masked: a trailing run of digits is held back until the
    text after it shows whether it is a card number; what was printed is never taken back."""
    text, shown = "", ""
    for piece in pieces:
        text += piece
        open_run = _OPEN_DIGITS.search(text)
        # Masking only rewrites digit runs (keywords and other text stay), so the masked text up
        # to a cut before the open run is a prefix of the final masked text.
        masked = mask_card_numbers(text[: open_run.start()] if open_run else text)
        if len(masked) > len(shown):
            yield masked[len(shown) :]
            shown = masked
    rest = mask_card_numbers(text)[len(shown) :]
    if rest:
        yield rest


def command_ask(runtime: Runtime, args: argparse.Namespace, out: TextIO) -> int:
    stream = runtime.bot(args.variant).stream([{"role": "user", "content": args.question}], settings_from(args))
    if stream.notice:
        print(f"[note: {stream.notice}]", file=sys.stderr)
    for piece in masked_pieces(stream):
        out.write(piece)
        out.flush()
    out.write("\n")
    stats = stream.stats
    print(f"[{stats.new_tokens} tokens, first after {stats.ttft_s:.2f}s, {stats.decode_tokens_per_s:.1f} tok/s]", file=sys.stderr)
    return 0


def read_batch(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record); blank lines are skipped, malformed ones raise."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise BatchInputError(f"{path}: cannot read ({exc.strerror})") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BatchInputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or "id" not in record or not isinstance(record.get("messages"), list):
                raise BatchInputError(f'{path}:{number}: expected {{"id": ..., "messages": [...]}}')
            yield number, record


def command_batch(runtime: Runtime, args: argparse.Namespace) -> int:
    bot = runtime.bot(args.variant)
    settings = settings_from(args)
    records = list(read_batch(args.input))  # validate the whole file before any work
    args.output.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    with args.output.open("w", encoding="utf-8") as out:
        for number, record in records:
            result: dict = {"id": record["id"], "variant": args.variant}
            try:
                # A leading system message in the input is ignored: each variant brings its own.
                messages = [m for m in record["messages"] if not (isinstance(m, dict) and m.get("role") == "system")]
                reply = bot.reply(messages, settings)
                stats = reply.stats
                result.update(reply=mask_card_numbers(reply.text), latency_s=round(stats.latency_s, 4), ttft_s=round(stats.ttft_s, 4), new_tokens=stats.new_tokens, prompt_tokens=stats.prompt_tokens)
                # Which guard acted, and for the emergency guard which part (rules, detector) and its score.
                result["guard"] = {"note": reply.guard_note or None, "emergency": reply.triage.record() if reply.triage else None}
            except ConversationError as exc:
                failures += 1
                result["error"] = mask_card_numbers(f"line {number}: {exc}")
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{record['id']}: {result.get('new_tokens', 0)} tokens" + (f" (error: {result['error']})" if "error" in result else ""), file=sys.stderr)
    print(f"wrote {len(records)} replies to {args.output} ({failures} failed)", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = make_parser().parse_args(argv)
    out = out or sys.stdout
    try:
        runtime = get_runtime(BaseModelSpec.from_env(args.base_model, backend=args.backend), args.adapters_dir)
        if args.command == "list":
            return command_list(runtime, out)
        if args.command == "ask":
            return command_ask(runtime, args, out)
        return command_batch(runtime, args)
    except (BaseModelError, BatchInputError, SettingsError, ConversationError, VariantUnavailable, UnknownVariant, GenerationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
