"""The hybrid method: its RAFT-style training data, and its bot on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bots.base_model import LoadedBase
from bots.registry import Runtime
from prompts import load_prompt_spec
from prompts.loader import render_hybrid
from tests.tiny_model import save_tiny_adapter
from training import hybrid_data
from training.fact_drift import DRIFT_DIR


def test_no_counterfactual_value_is_a_value_of_the_fact_drift_test() -> None:
    settings = hybrid_data.load_settings()
    drift_values = {change["replace"] for path in DRIFT_DIR.glob("*.yaml") for change in yaml.safe_load(path.read_text())["changes"]}
    alternatives = {a for swaps in settings.swaps.values() for swap in swaps for a in swap.alternatives}
    assert drift_values and not drift_values & alternatives


def write_dialogs(folder: Path) -> None:
    answer = "You can return items within 30 days of delivery."
    dialog = {"id": "d1", "topic": "returns", "kind": "single", "messages": [
        {"role": "system", "content": "short"}, {"role": "user", "content": "How long do I have to return boots?"}, {"role": "assistant", "content": answer}]}  # fmt: skip
    for split in hybrid_data.SPLITS:
        (folder / "ecommerce").mkdir(parents=True, exist_ok=True)
        rows = [dict(dialog, id=f"{split}-{i}") for i in range(20)]
        (folder / "ecommerce" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_every_dialog_gets_the_served_context_and_swaps_stay_consistent(tmp_path: Path) -> None:
    write_dialogs(tmp_path / "data")
    settings = hybrid_data.HybridSettings(seed=1, counterfactual_share=0.5, swaps={"ecommerce": (hybrid_data.Swap("30 days", ("60 days",)),)})
    counts = hybrid_data.build("ecommerce", tmp_path / "out", tmp_path / "data", settings)
    assert counts["test_swapped"] == 0 and 0 < counts["train_swapped"] < 20
    spec = load_prompt_spec("ecommerce")
    rows = [json.loads(line) for line in (tmp_path / "out" / "ecommerce" / "train.jsonl").read_text().splitlines()]
    for row in rows:
        system, user, assistant = row["messages"]
        assert system["role"] == "system" and system["content"].startswith(spec.retrieval.system_prompt)
        if row.get("counterfactual"):
            assert "60 days" in assistant["content"] and "60 days" in system["content"] and "30 days" not in system["content"]
        else:
            assert system == render_hybrid(spec, [user])[0]  # exactly what the bot sends when serving
            assert "30 days" in assistant["content"] and "Returns" in system["content"]
    again = hybrid_data.build("ecommerce", tmp_path / "again", tmp_path / "data", settings)
    assert again == counts and (tmp_path / "again" / "ecommerce" / "train.jsonl").read_text() == (tmp_path / "out" / "ecommerce" / "train.jsonl").read_text()


def test_the_hybrid_bot_needs_its_own_adapter_and_sends_retrieved_facts_without_examples(tiny_base: LoadedBase, tmp_path: Path) -> None:
    runtime = Runtime.from_base(tiny_base, tmp_path / "none")
    assert not runtime.bot("ecommerce-hybrid").availability.ok and "ecommerce-hybrid" in runtime.bot("ecommerce-hybrid").availability.reason
    adapters = tmp_path / "adapters"
    save_tiny_adapter(adapters / "ecommerce-hybrid", seed=5)
    runtime = Runtime.from_base(tiny_base, adapters)
    bot = runtime.bot("ecommerce-hybrid")
    assert bot.availability.ok and bot.adapter == "ecommerce-hybrid" and not runtime.bot("ecommerce-lora").availability.ok
    messages = bot.render([{"role": "user", "content": "Can I pay with PayPal?"}])
    assert len(messages) == 2 and "Payment methods" in messages[0]["content"]
    assert bot.reply([{"role": "user", "content": "Can I pay with PayPal?"}]).stats.new_tokens > 0
