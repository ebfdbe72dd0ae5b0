"""The `python -m bots` CLI on the tiny model: list, ask and the batch round trip."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bots import cli
from bots.base_model import LoadedBase
from bots.bot import ReplyStream
from bots.conversation import ConversationError
from bots.generation import GenerationStats
from bots.registry import METHODS, Runtime, set_runtime
from bots.safety import mask_card_numbers
from tests.tiny_model import save_tiny_adapter


@pytest.fixture()
def tiny_runtime(tiny_base: LoadedBase, tmp_path: Path) -> Iterator[Runtime]:
    save_tiny_adapter(tmp_path / "adapters" / "ecommerce")
    runtime = Runtime.from_base(tiny_base, tmp_path / "adapters")
    set_runtime(runtime)
    yield runtime
    set_runtime(None)


def test_list_shows_every_variant_and_why_one_is_unavailable(tiny_runtime: Runtime) -> None:
    out = io.StringIO()
    assert cli.main(["list"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("base model: tiny-llama")
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {f"{d}-{m}" for d in ("ecommerce", "medical") for m in METHODS}
    assert rows["ecommerce-lora"].endswith("available") and rows["medical-base"].split()[1:] == ["base", "available"]
    assert "unavailable: adapter folder" in rows["medical-lora"]


def test_ask_streams_the_reply(tiny_runtime: Runtime) -> None:
    out = io.StringIO()
    assert cli.main(["ask", "--variant", "ecommerce-lora", "--max-new-tokens", "6", "hello"], out=out) == 0
    expected = tiny_runtime.bots["ecommerce-lora"].reply([{"role": "user", "content": "hello"}], cli.settings_from(cli.make_parser().parse_args(["ask", "--variant", "ecommerce-lora", "--max-new-tokens", "6", "x"])))
    assert out.getvalue() == expected.text + "\n"


def test_batch_round_trip_keeps_ids_and_reports_stats(tiny_runtime: Runtime, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    records = [
        {"id": "a", "messages": [{"role": "user", "content": "What is the return window?"}]},
        {"id": 7, "messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "thanks"}]},
    ]
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    target = tmp_path / "out" / "replies.jsonl"
    args = ["batch", "--variant", "medical-prompt", "--input", str(source), "--output", str(target), "--max-new-tokens", "8"]
    assert cli.main(args) == 0
    first = [json.loads(line) for line in target.read_text().splitlines()]
    assert [row["id"] for row in first] == ["a", 7]
    for row in first:
        assert {"reply", "latency_s", "ttft_s", "new_tokens"} <= set(row)
        assert 1 <= row["new_tokens"] <= 8 and row["latency_s"] >= row["ttft_s"] > 0
    assert cli.main(args) == 0  # greedy by default: a second run gives the same replies
    second = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["reply"] for r in second] == [r["reply"] for r in first]


def test_batch_refuses_a_malformed_file_naming_the_line(tiny_runtime: Runtime, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    target = tmp_path / "out.jsonl"
    assert cli.main(["batch", "--variant", "medical-prompt", "--input", str(source), "--output", str(target)]) == cli.EXIT_USAGE
    assert "in.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not target.exists()  # nothing half-written


def test_batch_reports_bad_lines_and_keeps_going(tiny_runtime: Runtime, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "empty", "messages": [{"role": "user", "content": "  "}]}\n{"id": "ok", "messages": [{"role": "user", "content": "hi"}]}\n')
    target = tmp_path / "out.jsonl"
    assert cli.main(["batch", "--variant", "ecommerce-prompt", "--input", str(source), "--output", str(target), "--max-new-tokens", "4"]) == 1
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert "empty" in rows[0]["error"] and "reply" in rows[1]


def test_unavailable_variant_and_bad_settings_are_clear_errors(tiny_runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ask", "--variant", "medical-lora", "hi"]) == cli.EXIT_USAGE
    assert "medical-lora is unavailable" in capsys.readouterr().err
    assert cli.main(["ask", "--variant", "medical-prompt", "--temperature", "-1", "hi"]) == cli.EXIT_USAGE
    assert "temperature" in capsys.readouterr().err


# --- card numbers are masked in everything the CLI prints or writes -------------------------------

CARD = "4111 1111 1111 1111"
MESSAGE = f"my card is {CARD}, cvv 123: was I charged twice?"


def _echo_bot(runtime: Runtime, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a variant repeat the user's last message in small pieces, as a model may (a card number cut in two)."""

    def stream(conversation: list[dict], settings: object = None, override: object = None, guard: bool = True) -> ReplyStream:
        text = conversation[-1]["content"]
        if text.startswith("!"):
            raise ConversationError(f"cannot answer {text}")
        reply = f"You said: {text}"
        return ReplyStream(iter([reply[i : i + 3] for i in range(0, len(reply), 3)]), GenerationStats(new_tokens=len(reply) // 3))

    monkeypatch.setattr(runtime.bots[name], "stream", stream)


def test_batch_masks_card_numbers_in_replies_errors_and_its_log(tiny_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _echo_bot(tiny_runtime, "ecommerce-prompt", monkeypatch)
    source = tmp_path / "in.jsonl"
    records = [{"id": "card", "messages": [{"role": "user", "content": MESSAGE}]}, {"id": "bad", "messages": [{"role": "user", "content": f"! {CARD}"}]}]
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    target = tmp_path / "out.jsonl"
    assert cli.main(["batch", "--variant", "ecommerce-prompt", "--input", str(source), "--output", str(target)]) == 1
    written = target.read_text()
    logged = capsys.readouterr()
    rows = [json.loads(line) for line in written.splitlines()]
    assert rows[0]["reply"] == "You said: my card is **** **** **** 1111, cvv ***: was I charged twice?"
    assert rows[1]["error"] == "line 2: cannot answer ! **** **** **** 1111"
    for text in (written, logged.out, logged.err):
        assert "1111 1111" not in text and "cvv 123" not in text


def test_ask_masks_a_card_number_the_reply_repeats(tiny_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    _echo_bot(tiny_runtime, "ecommerce-prompt", monkeypatch)
    out = io.StringIO()
    assert cli.main(["ask", "--variant", "ecommerce-prompt", MESSAGE], out=out) == 0
    assert out.getvalue() == "You said: my card is **** **** **** 1111, cvv ***: was I charged twice?\n"


@pytest.mark.parametrize("text", [
    MESSAGE,
    "order 12345 shipped; card 5500-0000-0000-0004 exp 12/27, security code is 9876",
    "no numbers at all",
    "ends with a card 378282246310005",
    "cvv2 = 4321 and 12 items",
])
def test_masked_pieces_stream_what_masking_the_whole_text_gives(text: str) -> None:
    expected = mask_card_numbers(text)
    for size in (1, 2, 3, 5, 8, len(text)):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert "".join(cli.masked_pieces(pieces)) == expected, size


def test_masked_pieces_hold_back_only_digits() -> None:
    assert list(cli.masked_pieces(["Hello ", "world", "!"])) == ["Hello ", "world", "!"]  # words stream at once
    assert list(cli.masked_pieces(["call 4111 ", "1111 1111 ", "1111 now"])) == ["call", " **** **** **** 1111 now"]
