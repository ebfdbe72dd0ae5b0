"""Fast tests of the LoRA training pipeline, on the tiny in-process model (no real model, no network).

Run: ``python -m pytest tests/test_training.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from bots.base_model import LoadedBase
from tests.tiny_model import make_tiny_base
from training.adapter_meta import METADATA_FILE, AdapterMetadata, write_metadata
from training.collate import IGNORE_INDEX, DialogCollator, length_grouped_order, tokenize_dialog
from training.config import CONFIG_DIR, ConfigError, TrainConfig, load_config
from training.hub_cards import read_front_matter
from training.loss import assistant_loss_sum, full_logits_loss_sum
from training.train import attach_lora, config_from_args, main, make_parser, make_trainer, tokenize_split

TWO_TURNS = [
    {"role": "system", "content": "You are Northwind Assistant."},
    {"role": "user", "content": "how can I return my order?"},
    {"role": "assistant", "content": "Returns are accepted within 30 days of delivery."},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "You are welcome!"},
]


def _dialog(index: int) -> dict:
    replies = ["Standard shipping takes 3-5 business days.", "Returns are accepted within 30 days.", "Call 911 now."]
    messages = [{"role": "system", "content": "You are Northwind Assistant."}]
    for turn in range(1 + index % 2):
        messages += [{"role": "user", "content": f"question {index} {turn}?"}, {"role": "assistant", "content": replies[(index + turn) % 3]}]
    return {"id": f"d{index}", "topic": "test", "kind": "single", "messages": messages}


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A small dataset for both domains: data/<domain>/{train,validation,test}.jsonl."""
    root = tmp_path / "data"
    for domain in ("ecommerce", "medical"):
        for split, count in (("train", 12), ("validation", 4), ("test", 4)):
            path = root / domain / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(_dialog(i)) + "\n" for i in range(count)))
    return root


def _tiny_config(data: Path, tmp_path: Path, **changes: object) -> TrainConfig:
    values = {
        "domain": "ecommerce",
        "data_dir": str(data),
        "output_dir": str(tmp_path / "adapter"),
        "work_dir": str(tmp_path / "work"),
        "lora_r": 4,
        "learning_rate": 1e-2,
        "epochs": 2,
        "per_device_batch_size": 4,
        "eval_batch_size": 4,
        "max_length": 128,
        "logging_steps": 1,
        "progress_bar": False,
    }
    values.update(changes)
    return load_config(None, values)


def _cli(config: TrainConfig) -> list[str]:
    return [arg for name, value in config.to_dict().items() if value is not None and name != "target_modules" for arg in (f"--{name}", str(value))]


# --- tokenisation and labels -------------------------------------------------------------


def test_labels_are_ignored_exactly_on_non_assistant_tokens(tiny_base: LoadedBase) -> None:
    tokenizer = tiny_base.tokenizer

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # Hand-built expectation: ChatML segment by segment; only "reply<|im_end|>" of the assistant is trained.
    expected_ids: list[int] = []
    expected_labels: list[int] = []
    for message in TWO_TURNS:
        header, body, closing = ids(f"<|im_start|>{message['role']}\n"), ids(message["content"] + "<|im_end|>"), ids("\n")
        trained = message["role"] == "assistant"
        expected_ids += header + body + closing
        expected_labels += [IGNORE_INDEX] * len(header) + (body if trained else [IGNORE_INDEX] * len(body)) + [IGNORE_INDEX] * len(closing)

    tokens = tokenize_dialog(TWO_TURNS, tokenizer)
    assert tokens.input_ids == expected_ids
    assert tokens.labels == expected_labels
    assert tokens.input_ids == tokenizer.apply_chat_template(TWO_TURNS)["input_ids"]  # the template's own rendering
    trained_text = tokenizer.decode([label for label in tokens.labels if label != IGNORE_INDEX])
    assert trained_text == "Returns are accepted within 30 days of delivery.<|im_end|>You are welcome!<|im_end|>"


def test_max_length_cuts_the_end(tiny_base: LoadedBase) -> None:
    full = tokenize_dialog(TWO_TURNS, tiny_base.tokenizer)
    cut = tokenize_dialog(TWO_TURNS, tiny_base.tokenizer, max_length=20)
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]


def test_collator_pads_to_the_longest_row_only(tiny_base: LoadedBase) -> None:
    rows = [tokenize_dialog(_dialog(i)["messages"], tiny_base.tokenizer) for i in range(3)]
    batch = DialogCollator(pad_token_id=0)([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])
    width = max(len(r.input_ids) for r in rows)
    assert batch["input_ids"].shape == (3, width)
    assert batch["attention_mask"].sum().item() == sum(len(r.input_ids) for r in rows)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_length_grouped_order_is_a_permutation_with_similar_lengths_per_batch() -> None:
    lengths = [int(x) for x in torch.randint(10, 400, (203,), generator=torch.Generator().manual_seed(1))]
    order = length_grouped_order(lengths, batch_size=8, generator=torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert all(len(batch) == 8 for batch in batches[:-1]) and len(batches[-1]) == 203 % 8
    grouped_waste = sum(8 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(0)).tolist()
    random_waste = sum(8 * max(lengths[i] for i in shuffled[j : j + 8]) - sum(lengths[i] for i in shuffled[j : j + 8]) for j in range(0, 203, 8))
    assert grouped_waste < random_waste / 3


# --- loss ----------------------------------------------------------------------------------


def test_loss_on_labelled_positions_equals_full_logits_masked_loss(tiny_base: LoadedBase) -> None:
    rows = [tokenize_dialog(_dialog(i)["messages"], tiny_base.tokenizer) for i in (0, 1, 2)]
    batch = DialogCollator(tiny_base.tokenizer.pad_token_id)([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])
    model = tiny_base.model
    weight = model.get_input_embeddings().weight

    fast, fast_count = assistant_loss_sum(model, batch)
    fast_grad = torch.autograd.grad(fast, weight)[0]
    full, full_count = full_logits_loss_sum(model, batch)
    full_grad = torch.autograd.grad(full, weight)[0]

    assert fast_count == full_count == sum(r.trained_tokens for r in rows)  # position 0 is never labelled
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grad, full_grad, rtol=1e-4, atol=1e-6)


# --- training ------------------------------------------------------------------------------


def test_three_steps_move_lora_weights_and_leave_base_weights_bit_identical(tiny_base: LoadedBase, data_dir: Path, tmp_path: Path) -> None:
    before = {name: tensor.clone() for name, tensor in tiny_base.model.state_dict().items()}
    config = _tiny_config(data_dir, tmp_path)
    model = attach_lora(tiny_base, config)
    lora_before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in name for name in lora_before)

    train_set = tokenize_split([_dialog(i) for i in range(12)], tiny_base.tokenizer, config.max_length)
    trainer = make_trainer(config, model, tiny_base.tokenizer, train_set, None, tmp_path / "work", max_steps=3)
    trainer.train()
    assert trainer.state.global_step == 3

    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p.detach(), lora_before[name]), f"{name} did not move"
    base_after = {name.replace("base_model.model.", "").replace(".base_layer", ""): t for name, t in model.state_dict().items() if "lora_" not in name}
    assert set(base_after) == set(before)
    for name, tensor in before.items():
        assert torch.equal(base_after[name], tensor), f"base weight {name} changed"


def test_end_to_end_main_writes_every_output_file(tiny_base: LoadedBase, data_dir: Path, tmp_path: Path) -> None:
    config = _tiny_config(data_dir, tmp_path)
    tiny_base.hub_id = "example-org/tiny-llama"  # loaded from a temporary folder: the folder must not be named
    output = main(_cli(config), base=tiny_base)

    assert output == tmp_path / "adapter"
    names = {path.name for path in output.iterdir()}
    assert names == {"adapter_config.json", "adapter_model.safetensors", METADATA_FILE, "README.md", "training_log.json", "loss_curve.png"}
    metadata = json.loads((output / METADATA_FILE).read_text())
    assert set(metadata) == {"domain", "base_name", "base_fingerprint", "data_sha256", "created"}
    assert metadata["domain"] == "ecommerce" and metadata["base_fingerprint"] == tiny_base.fingerprint
    log = json.loads((output / "training_log.json").read_text())
    assert [record["epoch"] for record in log["epochs"]] == [1.0, 2.0]
    assert log["test_loss_adapter"] < log["test_loss_base"]
    card = (output / "README.md").read_text()
    assert tiny_base.fingerprint in card and metadata["data_sha256"] in card and "real (non-padding)" in card
    assert json.loads((output / "adapter_config.json").read_text())["base_model_name_or_path"] == "example-org/tiny-llama"
    hub = read_front_matter(card)
    assert hub["library_name"] == "peft" and hub["base_model"] == "example-org/tiny-llama" and "lora" in hub["tags"]
    assert (output / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    assert list((tmp_path / "work").glob("run-*/checkpoint-*")), "checkpoints belong in the work dir"

    # The shipped adapter reproduces the trained model on a fresh copy of the same base.
    trained = tiny_base.model
    reloaded = PeftModel.from_pretrained(make_tiny_base().model, str(output))
    ids = torch.tensor([tokenize_dialog(TWO_TURNS, tiny_base.tokenizer).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits)

    # Training can continue from it (same base fingerprint).
    again = main(_cli(config) + ["--init-adapter", str(output), "--output_dir", str(tmp_path / "again"), "--epochs", "1"], base=make_tiny_base())
    assert (again / "adapter_model.safetensors").is_file()


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_parses_into_train_config(path: Path, data_dir: Path) -> None:
    config = load_config(path, {"data_dir": str(data_dir)})  # the yaml is under test here, not the data
    assert isinstance(config, TrainConfig)
    assert config.domain == path.stem


def test_shipped_yamls_cover_every_domain() -> None:
    from training.dialogs import DOMAINS

    assert {path.stem for path in CONFIG_DIR.glob("*.yaml")} == set(DOMAINS)


def test_cli_overrides_are_parsed_by_field_type(data_dir: Path) -> None:
    args = make_parser().parse_args(
        ["--domain", "medical", "--data-dir", str(data_dir), "--lora-r", "8", "--learning_rate", "1e-4", "--target_modules", "q_proj,v_proj", "--progress_bar", "false", "--max_train_dialogs", "none"]
    )
    config = config_from_args(args)
    assert config.lora_r == 8 and config.learning_rate == 1e-4 and config.target_modules == ["q_proj", "v_proj"]
    assert config.progress_bar is False and config.max_train_dialogs is None
    assert config.epochs == load_config(CONFIG_DIR / "medical.yaml", {"data_dir": str(data_dir)}).epochs  # the rest comes from the yaml


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lora_rank": 8}, "lora_rank"),
        ({"lora_r": "abc"}, "lora_r"),
        ({"lora_r": 0}, "lora_r"),
        ({"lora_r": 2.5}, "lora_r"),
        ({"learning_rate": -1e-4}, "learning_rate"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"epochs": 0}, "epochs"),
        ({"progress_bar": "maybe"}, "progress_bar"),
        ({"target_modules": 3}, "target_modules"),
        ({"domain": "legal"}, "domain"),
        ({"data_dir": "/nonexistent/data"}, "data_dir"),
    ],
)
def test_bad_config_values_raise_config_error_naming_the_field(data_dir: Path, tmp_path: Path, change: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        _tiny_config(data_dir, tmp_path, **change)


def test_bad_yaml_file_is_refused(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"domain: ecommerce\ndata_dir: {data_dir}\nlora_r: [1, 2]\n")
    with pytest.raises(ConfigError, match="lora_r"):
        load_config(path)


# --- refusals through the CLI (exit code 2, one line) ----------------------------------------


def _refusal(capsys: pytest.CaptureFixture[str], argv: list[str], base: LoadedBase) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv, base=base)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_main_refuses_a_bad_config(capsys: pytest.CaptureFixture[str], tiny_base: LoadedBase, data_dir: Path, tmp_path: Path) -> None:
    argv = _cli(_tiny_config(data_dir, tmp_path)) + ["--lora_r", "0"]
    assert "lora_r" in _refusal(capsys, argv, tiny_base)


def test_main_refuses_a_malformed_data_line(capsys: pytest.CaptureFixture[str], tiny_base: LoadedBase, data_dir: Path, tmp_path: Path) -> None:
    train_file = data_dir / "ecommerce" / "train.jsonl"
    lines = train_file.read_text().splitlines()
    lines[2] = json.dumps({"id": "x", "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]})
    train_file.write_text("\n".join(lines) + "\n")
    message = _refusal(capsys, _cli(_tiny_config(data_dir, tmp_path)), tiny_base)
    assert "train.jsonl:3" in message and "role" in message


def test_main_refuses_an_adapter_of_a_foreign_base(capsys: pytest.CaptureFixture[str], tiny_base: LoadedBase, data_dir: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    write_metadata(foreign, AdapterMetadata.now("ecommerce", "another model", "f" * 64, "0" * 64))
    message = _refusal(capsys, _cli(_tiny_config(data_dir, tmp_path)) + ["--init-adapter", str(foreign)], tiny_base)
    assert "trained on base ffffffff" in message and tiny_base.fingerprint in message
    assert not (tmp_path / "adapter").exists()
