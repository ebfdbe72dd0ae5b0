"""The llama.cpp backend: backend choice, the GGUF LoRA converter, and the scheduler.

The scheduler tests run the embedded SmolLM2 GGUF with llama.cpp (it loads in a fraction of
a second). Without llama-cpp-python they skip, except under CI, where they fail: CI installs
it (``make test`` does). The comparisons with the transformers reference are ``slow``.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bots.backbone_base import AdapterError, ContextOverflow
from bots.backends import choose_backend
from bots.base_source import BaseModelError, BaseModelSpec, embedded_gguf_path
from bots.generation import GenerationSettings, GenerationStats
from bots.gguf_lora import HeadLayout, LoraConversionError, _permute_rows, convert_peft_adapter
from bots.llama_engine import llama_cpp_installed

ON_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
ADAPTERS = Path(__file__).resolve().parent.parent / "bots" / "adapters"

needs_llama = pytest.mark.skipif(not llama_cpp_installed() and not ON_CI, reason="llama-cpp-python is not installed (pip install -r requirements-fast.txt)")


# --- backend choice (no model) ------------------------------------------------------------------


def test_auto_picks_llamacpp_for_the_embedded_gguf_when_installed_and_transformers_for_a_folder(tmp_path: Path) -> None:
    embedded = choose_backend(BaseModelSpec(backend="auto"))
    assert embedded.name == ("llamacpp" if llama_cpp_installed() else "transformers")
    assert choose_backend(BaseModelSpec(source=str(tmp_path), backend="auto")).name == "transformers"


def test_explicit_backend_choices_are_checked(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="unknown backend 'vllm'"):
        choose_backend(BaseModelSpec(backend="vllm"))
    if llama_cpp_installed():
        with pytest.raises(BaseModelError, match="needs a GGUF file"):
            choose_backend(BaseModelSpec(source=str(tmp_path), backend="llamacpp"))
    assert choose_backend(BaseModelSpec(backend="transformers")).name == "transformers"


def test_backend_comes_from_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOP_BACKEND", "transformers")
    assert BaseModelSpec.from_env().backend == "transformers"
    assert BaseModelSpec.from_env(backend="llamacpp").backend == "llamacpp"


@pytest.mark.parametrize(("value", "merged"), [("1", True), ("true", True), ("0", False), ("off", False), ("", True)])
def test_merging_adapters_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, merged: bool) -> None:
    monkeypatch.setenv("TOP_MERGE_ADAPTERS", value)
    assert BaseModelSpec.from_env().merge_adapters is merged


def test_threads_come_from_the_environment_and_a_bad_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOP_THREADS", "1")
    assert BaseModelSpec.from_env().threads == 1
    monkeypatch.setenv("TOP_THREADS", "")
    assert BaseModelSpec.from_env().threads is None
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("TOP_THREADS", bad)
        with pytest.raises(BaseModelError, match="TOP_THREADS must be a positive whole number"):
            BaseModelSpec.from_env()


@pytest.mark.parametrize("name", ["TOP_RUNNING", "TOP_LANES"])
def test_running_and_lanes_come_from_the_environment_and_a_bad_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    field_name = name.removeprefix("TOP_").lower()
    monkeypatch.setenv(name, "")
    assert getattr(BaseModelSpec.from_env(), field_name) is None
    monkeypatch.setenv(name, "6")
    assert getattr(BaseModelSpec.from_env(), field_name) == 6
    for bad in ("0", "many", "2.5"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(BaseModelError, match=f"{name} must be a positive whole number"):
            BaseModelSpec.from_env()


def test_the_llamacpp_backbone_takes_running_and_lanes_from_the_spec(tmp_path: Path) -> None:
    if not llama_cpp_installed():
        pytest.fail("llama-cpp-python is not installed; CI is set, so this fails instead of skipping")
    from bots.backends import build_backbone

    backbone = build_backbone(BaseModelSpec(cache_dir=tmp_path, backend="llamacpp", lanes=3, running=2, merge_adapters=False))
    try:
        assert (backbone.config.lanes, backbone.config.running, backbone.parallel_replies) == (3, 2, 2)
        assert len(backbone.lanes) == 3
    finally:
        backbone.close()


# --- the converter (no model) -------------------------------------------------------------------


def _write_peft_adapter(folder: Path, tensors: dict[str, np.ndarray], **config: object) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    base_config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "use_dora": False}
    (folder / "adapter_config.json").write_text(json.dumps({**base_config, **config}))
    return folder


def _pair(layer: int, proj: str, out_dim: int, in_dim: int = 8, rank: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(layer)
    block = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    key = f"base_model.model.model.layers.{layer}.{block}.{proj}"
    return {
        f"{key}.lora_A.weight": rng.standard_normal((rank, in_dim)).astype(np.float32),
        f"{key}.lora_B.weight": rng.standard_normal((out_dim, rank)).astype(np.float32),
    }


def test_converter_writes_llama_cpp_names_shapes_scaling_and_rotary_row_order(tmp_path: Path) -> None:
    import gguf

    tensors = {**_pair(0, "q_proj", 8), **_pair(0, "v_proj", 4)}
    adapter = _write_peft_adapter(tmp_path / "a", tensors)
    out = convert_peft_adapter(adapter, tmp_path / "a.gguf", HeadLayout(n_head=2, n_head_kv=1))
    reader = gguf.GGUFReader(str(out))
    found = {t.name: np.array(t.data) for t in reader.tensors}
    assert set(found) == {f"blk.0.{n}.weight.lora_{s}" for n in ("attn_q", "attn_v") for s in "ab"}
    q_b = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    scaling = 4 / 2
    # q rows follow llama.cpp's rotary order; v rows keep theirs; both carry PEFT's scaling.
    assert np.allclose(found["blk.0.attn_q.weight.lora_b"], _permute_rows(q_b * scaling, 2))
    assert not np.allclose(found["blk.0.attn_q.weight.lora_b"], q_b * scaling)
    assert np.allclose(found["blk.0.attn_v.weight.lora_b"], tensors["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] * scaling)
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == 0.0


def test_rotary_permutation_pairs_each_heads_halves() -> None:
    # One head of 4 rows [a0, a1, b0, b1] (two rotary halves) becomes interleaved [a0, b0, a1, b1].
    rows = np.arange(4)[:, None].astype(np.float32)
    assert _permute_rows(rows, 1)[:, 0].tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize(
    ("tensors", "config", "message"),
    [
        ({"base_model.model.lm_head.lora_A.weight": np.zeros((2, 8), np.float32)}, {}, "not a LoRA weight of a decoder layer"),
        (_pair(0, "q_proj", 8), {"use_dora": True}, "DoRA"),
        ({k: v for k, v in _pair(0, "q_proj", 8).items() if "lora_A" in k}, {}, "must both be present"),
        (_pair(0, "q_proj", 8), {"peft_type": "IA3"}, "not a LoRA adapter"),
    ],
)
def test_converter_refuses_what_it_cannot_express(tmp_path: Path, tensors: dict, config: dict, message: str) -> None:
    adapter = _write_peft_adapter(tmp_path / "bad", tensors, **config)
    with pytest.raises(LoraConversionError, match=message):
        convert_peft_adapter(adapter, tmp_path / "bad.gguf", HeadLayout(2, 1))
    assert not (tmp_path / "bad.gguf").exists()


# --- the scheduler, on the embedded GGUF ---------------------------------------------------------


@pytest.fixture(scope="module")
def llama_runtime(tmp_path_factory: pytest.TempPathFactory):
    if not llama_cpp_installed():
        pytest.fail("llama-cpp-python is not installed; CI is set, so this fails instead of skipping")
    from bots.llama_backbone import LlamaCppBackbone, LlamaServingConfig, load_gguf_base
    from bots.registry import Runtime

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("TOP_CACHE_DIR")
    os.environ["TOP_CACHE_DIR"] = str(cache)
    try:
        spec = BaseModelSpec.from_env(backend="llamacpp")
        # A lane per warm prefix (all ten variants), so the tests of the cached prefixes hold whatever the order.
        backbone = LlamaCppBackbone(load_gguf_base(spec), config=LlamaServingConfig(lanes=12, batch_tokens=256))
        runtime = Runtime.from_backbone(backbone, warm_prompts=True)
        assert backbone.wait_idle(60)
        yield runtime
        backbone.close()
    finally:
        if old is None:
            os.environ.pop("TOP_CACHE_DIR", None)
        else:
            os.environ["TOP_CACHE_DIR"] = old


GREEDY = GenerationSettings(max_new_tokens=24)
QUESTIONS = {
    "ecommerce-lora": "Can I return a gift card?",
    "ecommerce-prompt": "Do you ship to Canada?",
    "medical-lora": "What helps with a mild sore throat?",
    "medical-prompt": "How much water should I drink a day?",
}


def _ask(runtime, variant: str, question: str, settings: GenerationSettings = GREEDY):
    return runtime.bot(variant).reply([{"role": "user", "content": question}], settings, guard=False)


def _plain_greedy(backbone, prompt_ids: list[int], adapter: str | None, steps: int) -> list[int]:
    """The reply from a fresh single-sequence context, fed the whole prompt at once."""
    from bots.generation import TokenPicker
    from bots.llama_engine import Run

    context = backbone.model.new_context(2048, 1, 512)
    try:
        context.set_adapter(backbone._adapter_handles[adapter] if adapter else None)
        picker, ids = TokenPicker(GREEDY), []
        logits = context.decode([Run(0, prompt_ids, 0)])[0]
        for step in range(steps):
            token = picker(logits, ids)
            if backbone.model.is_end_of_generation(token):
                break
            ids.append(token)
            logits = context.decode([Run(0, [token], len(prompt_ids) + step)])[0]
        return ids
    finally:
        context.close()


@needs_llama
def test_every_variant_answers_and_lora_variants_differ_from_the_bare_model(llama_runtime) -> None:
    for variant, question in QUESTIONS.items():
        reply = _ask(llama_runtime, variant, question)
        assert reply.text.strip(), variant
        assert reply.stats.new_tokens > 0
    backbone = llama_runtime.backbone
    prompt = backbone.encode(llama_runtime.bot("ecommerce-lora").render([{"role": "user", "content": QUESTIONS["ecommerce-lora"]}]))
    assert _plain_greedy(backbone, prompt, "ecommerce", 12) != _plain_greedy(backbone, prompt, None, 12)


@needs_llama
def test_a_reply_equals_a_fresh_single_context_decode_with_or_without_prefix_cache(llama_runtime) -> None:
    backbone = llama_runtime.backbone
    for variant in ("ecommerce-prompt", "medical-lora"):
        bot = llama_runtime.bot(variant)
        prompt = backbone.encode(bot.render([{"role": "user", "content": QUESTIONS[variant]}]))
        expected = _plain_greedy(backbone, prompt, bot.adapter, GREEDY.max_new_tokens)
        first, second = _ask(llama_runtime, variant, QUESTIONS[variant]), _ask(llama_runtime, variant, QUESTIONS[variant])
        assert first.stats.token_ids == expected
        assert second.stats.token_ids == expected
        assert second.stats.cached_prompt_tokens == len(prompt) - 1  # all but the last token came from the cache


@needs_llama
def test_the_prompt_variants_fixed_prefix_is_cached_at_start(llama_runtime) -> None:
    question = "Is it fine to take ibuprofen with food?"
    # The static sheet: system prompt, every rule and the few-shot dialogs (> 500 tokens). The prompt
    # method: its instruction and the rule it always sends (the emergency rule), before what it retrieves.
    for variant, at_least in (("medical-static", 500), ("medical-prompt", 150)):
        backbone, bot = llama_runtime.backbone, llama_runtime.bot(variant)
        reply = _ask(llama_runtime, variant, question)
        warm = backbone.encode(bot.render([{"role": "user", "content": ""}]))  # what the runtime prefilled at start
        prompt = backbone.encode(bot.render([{"role": "user", "content": question}]))
        shared = next(i for i, (a, b) in enumerate(zip(warm, prompt, strict=False)) if a != b)
        assert shared > at_least, variant
        assert reply.stats.cached_prompt_tokens >= shared, variant  # all of it came from the cache


@needs_llama
def test_every_variant_is_warmed_at_start_adapters_included(llama_runtime) -> None:
    """A warm-up per variant (its prefix file is written when it has run): an adapter's lane, or
    its merged pool, is ready before the first user."""
    backbone = llama_runtime.backbone
    for name, bot in llama_runtime.bots.items():
        warm = backbone.encode(bot.render([{"role": "user", "content": ""}]))
        assert backbone._kv_file(warm, bot.adapter).is_file(), name


@needs_llama
def test_concurrent_replies_of_all_four_variants_equal_each_alone(llama_runtime) -> None:
    alone = {variant: _ask(llama_runtime, variant, question).stats.token_ids for variant, question in QUESTIONS.items()}
    streams = {variant: llama_runtime.bot(variant).stream([{"role": "user", "content": q}], GREEDY, guard=False) for variant, q in QUESTIONS.items()}
    threads = [threading.Thread(target=stream.consume) for stream in streams.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert {variant: stream.stats.token_ids for variant, stream in streams.items()} == alone


@needs_llama
def test_more_requests_than_lanes_all_complete(llama_runtime) -> None:
    settings = GenerationSettings(max_new_tokens=8)
    count = len(llama_runtime.backbone.lanes) + 5
    streams = [llama_runtime.bot("ecommerce-lora").stream([{"role": "user", "content": f"Question number {i}: do you sell socks?"}], settings, guard=False) for i in range(count)]
    for stream in streams:
        stream.consume()
    assert all(stream.stats.stopped_by in ("eos", "length") and stream.text for stream in streams)


@needs_llama
def test_closing_a_stream_early_or_unread_frees_its_lane_at_once(llama_runtime) -> None:
    backbone = llama_runtime.backbone
    long = GenerationSettings(max_new_tokens=400)
    started = llama_runtime.bot("medical-lora").stream([{"role": "user", "content": "Tell me everything about sleep."}], long, guard=False)
    next(iter(started))
    unread = llama_runtime.bot("ecommerce-lora").stream([{"role": "user", "content": "Tell me everything about your shop."}], long, guard=False)
    started.close()
    unread.close()
    deadline = time.monotonic() + 1.0
    while any(lane.busy for lane in backbone.lanes) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(lane.busy for lane in backbone.lanes)
    assert started.stats.new_tokens < 400 and started.stats.stopped_by == "cancelled"


@needs_llama
def test_a_prompt_that_cannot_fit_is_refused_clearly(llama_runtime) -> None:
    with pytest.raises(ContextOverflow, match="exceed the 2048-token context"):
        llama_runtime.backbone.stream(list(range(100, 2100)), None, GenerationSettings(max_new_tokens=100), GenerationStats())


@needs_llama
def test_a_failed_decode_ends_the_replies_in_flight_with_a_clear_error_and_the_server_goes_on(llama_runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from webui.turns import PaneTurn

    context = llama_runtime.backbone.context
    real_decode = context.decode
    calls = {"n": 0}

    def failing_once(runs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated llama.cpp failure")
        return real_decode(runs)

    monkeypatch.setattr(context, "decode", failing_once)
    turn = PaneTurn.start(llama_runtime.bot("ecommerce-lora"), [], "Tell me about your shop.", GenerationSettings(max_new_tokens=40), guard=False)
    for _ in turn.updates():
        pass
    assert "generation stopped" in turn.notes() and "simulated llama.cpp failure" in turn.notes()
    assert not any(lane.busy for lane in llama_runtime.backbone.lanes)
    monkeypatch.setattr(context, "decode", real_decode)
    assert _ask(llama_runtime, "ecommerce-lora", QUESTIONS["ecommerce-lora"]).stats.stopped_by in ("eos", "length")


@needs_llama
def test_a_lane_can_start_from_another_lanes_prefix_and_the_reply_is_unchanged(llama_runtime) -> None:
    backbone = llama_runtime.backbone
    bot = llama_runtime.bot("ecommerce-prompt")
    question = "What payment methods do you take?"
    prompt = backbone.encode(bot.render([{"role": "user", "content": question}]))
    expected = _plain_greedy(backbone, prompt, None, GREEDY.max_new_tokens)
    assert _ask(llama_runtime, "ecommerce-prompt", question).stats.token_ids == expected  # now a lane holds this prompt
    # Two at once: one gets the lane that holds the prompt, the other copies it from there.
    streams = [bot.stream([{"role": "user", "content": question}], GREEDY, guard=False) for _ in range(2)]
    for stream in streams:
        stream.consume()
    assert [stream.stats.token_ids for stream in streams] == [expected, expected]
    assert [stream.stats.cached_prompt_tokens for stream in streams] == [len(prompt) - 1] * 2


@needs_llama
def test_adapters_for_another_base_or_unreadable_are_refused(llama_runtime, tmp_path: Path) -> None:
    import shutil

    foreign = tmp_path / "foreign"
    shutil.copytree(ADAPTERS / "ecommerce", foreign)
    meta = json.loads((foreign / "tune_or_prompt.json").read_text())
    (foreign / "tune_or_prompt.json").write_text(json.dumps({**meta, "base_fingerprint": "0" * 64}))
    with pytest.raises(AdapterError, match="another base model"):
        llama_runtime.backbone.load_adapter("foreign", foreign)
    garbage = tmp_path / "garbage"
    shutil.copytree(ADAPTERS / "ecommerce", garbage)
    (garbage / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="could not be loaded"):
        llama_runtime.backbone.load_adapter("garbage", garbage)
    assert "garbage" not in llama_runtime.backbone.adapters


# --- same model as the reference (transformers) ------------------------------------------------------


@pytest.mark.slow
@needs_llama
def test_prompt_ids_and_first_logits_match_the_transformers_reference(llama_runtime) -> None:
    import torch

    from bots.backbone import Backbone
    from bots.base_model import load_base
    from bots.llama_engine import Run

    reference = Backbone(load_base(BaseModelSpec()))
    reference.load_adapter("ecommerce", ADAPTERS / "ecommerce")
    fast = llama_runtime.backbone
    bot = llama_runtime.bot("ecommerce-lora")
    messages = bot.render([{"role": "user", "content": "Can I pay with PayPal?"}])
    prompt = fast.encode(messages)
    assert prompt == reference.encode(messages)
    wanted = {}
    for adapter in (None, "ecommerce"):
        context = fast.model.new_context(1024, 1, 512)
        context.set_adapter(fast._adapter_handles[adapter] if adapter else None)
        got = context.decode([Run(0, prompt, 0)])[0]
        context.close()
        with reference.lock, reference._adapter_active(adapter), torch.no_grad():
            want = reference.model(input_ids=torch.tensor([prompt]), logits_to_keep=1).logits[0, -1].numpy()
        # Q4_1 weights with 8-bit activations in llama.cpp vs dequantised fp32: close, not equal.
        assert float(np.abs(got - want).max()) < 1.5
        assert int(np.argmax(got)) in np.argsort(-want)[:3].tolist()
        wanted[adapter] = want
    assert float(np.abs(wanted[None] - wanted["ecommerce"]).max()) > 3.0  # the adapter's effect dwarfs the backends' difference


def test_embedded_gguf_is_found() -> None:
    assert embedded_gguf_path().suffix == ".gguf"


@needs_llama
def test_side_by_side_streams_all_panes_together_on_the_llama_backend(llama_runtime) -> None:
    from bots.registry import peek_runtime, set_runtime
    from webui.compare_tab import PANES, compare

    previous = peek_runtime()
    set_runtime(llama_runtime)
    try:
        # Snapshots: a frame holds the panes' history lists, which the handler keeps appending to.
        frames = [copy.deepcopy(frame) for frame in compare("Do you ship to Canada?", "all", 24, 0.0, 0.95, 1.1, 0, *([] for _ in PANES))]
    finally:
        set_runtime(previous)

    def panes_of(frame: tuple) -> dict:
        return dict(zip(PANES, frame[1 : 1 + len(PANES)], strict=True))

    final, stats = panes_of(frames[-1]), dict(zip(PANES, frames[-1][1 + len(PANES) :], strict=True))
    available = {name for name in PANES if llama_runtime.bots[name].availability.ok}  # a hybrid adapter may not be trained yet
    assert {"ecommerce-lora", "ecommerce-prompt", "medical-lora", "medical-prompt"} <= available
    assert all(len(final[name]) == 2 and final[name][1]["content"] for name in available)
    assert all("first token" in str(stats[name]) for name in available)
    assert all("unavailable" in str(stats[name]) for name in set(PANES) - available)
    # Interleaved, not one after the other: some frame shows two panes each with an unfinished answer.
    def unfinished(frame: tuple) -> int:
        return sum(1 for name, h in panes_of(frame).items() if name in available and len(h) == 2 and h[1]["content"] and h[1]["content"] != final[name][1]["content"])

    assert max(unfinished(frame) for frame in frames) >= 2


@needs_llama
def test_warm_prefixes_are_kept_on_disk_and_a_restart_loads_them_with_unchanged_replies(tmp_path: Path) -> None:
    from bots.llama_backbone import LlamaCppBackbone, LlamaServingConfig, load_gguf_base
    from bots.registry import Runtime

    spec = BaseModelSpec(cache_dir=tmp_path, backend="llamacpp")
    question = [{"role": "user", "content": "Do you ship to Canada?"}]

    def start() -> Runtime:
        # A lane per warm prefix (every method without an adapter, both domains), so none is evicted before the question.
        backbone = LlamaCppBackbone(load_gguf_base(spec), config=LlamaServingConfig(lanes=6))
        runtime = Runtime.from_backbone(backbone, adapters_dir=tmp_path / "no-adapters", warm_prompts=True)
        assert backbone.wait_idle(60)
        return runtime

    first = start()
    files = sorted((tmp_path / "prefix-kv").glob("*.kv"))
    assert len(files) == 6  # one per variant without an adapter (prompt, static sheet and base, both domains)
    expected = first.bot("ecommerce-static").reply(question, GREEDY, guard=False).stats
    first.backbone.close()

    second = start()  # loads the files: nothing to compute
    again = second.bot("ecommerce-static").reply(question, GREEDY, guard=False).stats
    assert again.token_ids == expected.token_ids
    assert again.cached_prompt_tokens == expected.cached_prompt_tokens > 500
    second.backbone.close()

    for file in files:
        file.write_bytes(b"garbage")  # a damaged file is recomputed, not trusted
    third = start()
    assert third.bot("ecommerce-static").reply(question, GREEDY, guard=False).stats.token_ids == expected.token_ids
    assert all(file.stat().st_size > 1000 for file in files)  # and written again
    third.backbone.close()


@needs_llama
def test_continuation_nll_is_teacher_forced_llama_cpp_logits_with_the_prefix_reused(llama_runtime) -> None:
    from bots.llama_engine import Run

    backbone = llama_runtime.backbone
    bot = llama_runtime.bot("ecommerce-prompt")
    prompt = backbone.encode(bot.render([{"role": "user", "content": "Do you ship to Canada?"}]))
    answer = backbone.encode_text("Yes, we ship to Canada in 5-8 business days.")
    # By hand: a fresh context, the answer fed one token at a time, log-softmax of each step's logits.
    context = backbone.model.new_context(2048, 1, 512)
    try:
        logits = context.decode([Run(0, prompt, 0)])[0]
        expected = 0.0
        for i, token in enumerate(answer):
            row = logits.astype(np.float64)
            expected += float(np.log(np.exp(row - row.max()).sum()) + row.max() - row[token])
            if i + 1 < len(answer):
                logits = context.decode([Run(0, [token], len(prompt) + i)])[0]
    finally:
        context.close()
    nll, count = backbone.continuation_nll(prompt, answer, None)
    assert count == len(answer) and nll == pytest.approx(expected, rel=1e-3)
    again, _ = backbone.continuation_nll(prompt, answer, None)  # the prompt now comes from the scoring cache
    assert again == pytest.approx(nll, rel=1e-4)
    other = backbone.encode(bot.render([{"role": "user", "content": "Do you ship to Mexico?"}]))
    assert backbone.continuation_nll(other, answer, None)[0] != pytest.approx(nll, rel=1e-4)  # a different prompt is scored afresh
    with_adapter, _ = backbone.continuation_nll(prompt, answer, "ecommerce")
    assert with_adapter != pytest.approx(nll, rel=1e-3)
    assert backbone.continuation_nll(prompt, answer, None)[0] == pytest.approx(nll, rel=1e-4)  # back to the bare base: unchanged
    with pytest.raises(ValueError):
        backbone.continuation_nll(prompt, [], None)
    with pytest.raises(AdapterError):
        backbone.continuation_nll(prompt, answer, "nope")


def test_embedding_and_scoring_from_other_threads_run_on_the_scheduler_thread(llama_runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """One host thread computes: a second OpenMP team made every later decode twice as slow."""
    from bots import llama_engine

    seen: list[str] = []
    for cls, name in ((llama_engine.EmbeddingContext, "embed"), (llama_engine.Context, "decode_every")):
        original = getattr(cls, name)

        def recording(self, *args, _original=original, **kwargs):
            seen.append(threading.current_thread().name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, recording)
    backbone = llama_runtime.backbone
    vectors = []
    worker = threading.Thread(target=lambda: vectors.append(backbone.embed("my chest hurts", blocks=None)), name="a-request")
    worker.start()
    worker.join(30)
    prompt = backbone.encode([{"role": "user", "content": "Can I return a gift card?"}])
    nll, count = backbone.continuation_nll(prompt, backbone.encode_text(" Yes, within 30 days."), None)
    assert len(vectors) == 1 and vectors[0].shape == (backbone.model.n_embd,)
    assert count > 0 and nll > 0
    assert seen == ["llama-scheduler", "llama-scheduler"]


def test_an_error_in_work_handed_to_the_scheduler_reaches_the_caller_and_the_server_goes_on(llama_runtime) -> None:
    backbone = llama_runtime.backbone

    def broken() -> None:
        raise ValueError("broken on purpose")

    with pytest.raises(ValueError, match="broken on purpose"):
        backbone._on_scheduler(broken)
    assert backbone._on_scheduler(lambda: threading.current_thread().name) == "llama-scheduler"
    assert _ask(llama_runtime, "ecommerce-prompt", "Do you ship to Canada?").text


@pytest.mark.slow
@needs_llama
def test_continuation_nll_is_close_to_the_transformers_reference(llama_runtime) -> None:
    from bots.backbone import Backbone
    from bots.base_model import load_base

    reference = Backbone(load_base(BaseModelSpec()))
    reference.load_adapter("medical", ADAPTERS / "medical")
    fast = llama_runtime.backbone
    bot = llama_runtime.bot("medical-lora")
    prompt = fast.encode(bot.render([{"role": "user", "content": "What helps a mild sore throat?"}]))
    answer = fast.encode_text("Warm drinks, rest and throat lozenges usually help. See a doctor if it lasts more than a week.")
    for adapter in (None, "medical"):
        fast_nll, count = fast.continuation_nll(prompt, answer, adapter)
        reference_nll, _ = reference.continuation_nll(prompt, answer, adapter)
        # Perplexities within 15% of each other (8-bit activations against fp32).
        assert abs(fast_nll - reference_nll) / count < 0.15


@needs_llama
def test_a_warm_prefix_file_reloads_into_the_same_reply_when_warm_ups_shared_a_prefix(tmp_path: Path) -> None:
    """Two lanes for four warm prefixes that share their opening words: lanes are reused and
    prefixes shared between them, and a file saved after a share once reloaded into another reply."""
    from bots.llama_backbone import LlamaCppBackbone, LlamaServingConfig, load_gguf_base
    from bots.registry import Runtime

    spec = BaseModelSpec(cache_dir=tmp_path, backend="llamacpp")
    question = [{"role": "user", "content": "Do you ship to Canada?"}]

    def reply(warm: bool) -> list[int]:
        backbone = LlamaCppBackbone(load_gguf_base(spec), config=LlamaServingConfig(lanes=2))
        runtime = Runtime.from_backbone(backbone, adapters_dir=tmp_path / "no-adapters", warm_prompts=warm)
        assert backbone.wait_idle(60)
        ids = runtime.bot("ecommerce-static").reply(question, GREEDY, guard=False).stats.token_ids
        backbone.close()
        return ids

    fresh = reply(warm=False)
    reply(warm=True)  # computes and saves the warm prefixes
    assert reply(warm=True) == fresh  # loads them


# --- merged adapters (LlamaServingConfig.merge_adapters) ----------------------------------------


@pytest.fixture(scope="module")
def merged_backbone(tmp_path_factory: pytest.TempPathFactory):
    """One adapter served both ways: at run time in the base's pool, and merged in a pool of its own."""
    if not llama_cpp_installed():
        pytest.fail("llama-cpp-python is not installed; CI is set, so this fails instead of skipping")
    from bots.llama_backbone import LlamaCppBackbone, LlamaServingConfig, load_gguf_base

    spec = BaseModelSpec(cache_dir=tmp_path_factory.mktemp("merged-cache"), backend="llamacpp")
    backbone = LlamaCppBackbone(load_gguf_base(spec), config=LlamaServingConfig(lanes=2, merge_adapters=True))
    backbone.load_adapter("ecommerce", ADAPTERS / "ecommerce")
    runtime_path = LlamaCppBackbone(load_gguf_base(spec), config=LlamaServingConfig(lanes=2, merge_adapters=False))
    runtime_path.load_adapter("ecommerce", ADAPTERS / "ecommerce")
    yield backbone, runtime_path
    backbone.close()
    runtime_path.close()


MERGE_QUESTIONS = ("Can I return a gift card?", "What does express shipping cost?", "How do I cancel an order?")


def _greedy_reply(backbone, question: str, adapter: str | None, steps: int = 24) -> tuple[list[int], list[int]]:
    prompt = backbone.encode([{"role": "user", "content": question}])
    stats = GenerationStats()
    "".join(backbone.stream(prompt, adapter, GenerationSettings(max_new_tokens=steps), stats))
    return prompt, stats.token_ids


def _shared(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@needs_llama
def test_a_merged_adapter_gets_a_pool_of_its_own_and_answers_like_the_adapter_not_the_bare_base(merged_backbone) -> None:
    merged, runtime_path = merged_backbone
    assert set(merged._pools) == {None, "ecommerce"} and merged._pools["ecommerce"].merged
    assert set(runtime_path._pools) == {None}  # without merging, adapters share the base's context
    assert merged.adapter_serving("ecommerce") == "merged Q8_0" and runtime_path.adapter_serving("ecommerce") is None
    with_adapter = sum(_shared(_greedy_reply(merged, q, "ecommerce")[1], _greedy_reply(runtime_path, q, "ecommerce")[1]) for q in MERGE_QUESTIONS)
    with_base = sum(_shared(_greedy_reply(merged, q, "ecommerce")[1], _greedy_reply(runtime_path, q, None)[1]) for q in MERGE_QUESTIONS)
    assert with_adapter > with_base


@needs_llama
def test_merged_and_bare_replies_in_flight_together_equal_each_alone(merged_backbone) -> None:
    merged, _ = merged_backbone
    jobs = [(q, adapter) for q in MERGE_QUESTIONS[:2] for adapter in ("ecommerce", None)]
    alone = [_greedy_reply(merged, q, adapter)[1] for q, adapter in jobs]
    stats = [GenerationStats() for _ in jobs]
    streams = [merged.stream(merged.encode([{"role": "user", "content": q}]), adapter, GenerationSettings(max_new_tokens=24), s) for (q, adapter), s in zip(jobs, stats, strict=True)]
    threads = [threading.Thread(target=lambda st=st: "".join(st)) for st in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [s.token_ids for s in stats] == alone


@needs_llama
def test_a_merged_adapter_is_scored_with_its_own_weights(merged_backbone) -> None:
    merged, runtime_path = merged_backbone
    prompt, reply = _greedy_reply(runtime_path, MERGE_QUESTIONS[0], "ecommerce")
    merged_nll, count = merged.continuation_nll(prompt, reply, "ecommerce")
    adapter_nll, _ = runtime_path.continuation_nll(prompt, reply, "ecommerce")
    base_nll, _ = merged.continuation_nll(prompt, reply, None)
    assert count == len(reply)
    assert abs(merged_nll - adapter_nll) < 0.5 * abs(base_nll - adapter_nll)  # near the adapter's, far from the base's
    assert merged.continuation_nll(prompt, reply, "ecommerce")[0] == pytest.approx(merged_nll, rel=1e-4)


@needs_llama
def test_prefix_kv_files_are_kept_apart_by_lane_count(tmp_path: Path) -> None:
    """llama.cpp refuses a sequence file saved by a context with another number of sequences."""
    from bots.llama_backbone import LlamaCppBackbone, LlamaServingConfig, load_gguf_base

    spec = BaseModelSpec(cache_dir=tmp_path, backend="llamacpp")
    files = {}
    for lanes in (2, 3, 3):
        backbone = LlamaCppBackbone(load_gguf_base(spec), config=LlamaServingConfig(lanes=lanes))
        files.setdefault(lanes, set()).add(backbone._kv_file([1, 2, 3], None))
        backbone.close()
    assert len(files[3]) == 1 and files[2] != files[3]


@needs_llama
def test_a_pool_that_cannot_open_fails_its_request_and_the_server_goes_on(merged_backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    from bots.backbone_base import GenerationError
    from bots.llama_engine import LlamaEngineError

    merged, _ = merged_backbone
    pool = merged._pools["ecommerce"]

    def no_memory(*args: object) -> None:
        raise LlamaEngineError("out of memory")

    monkeypatch.setattr(pool, "open", no_memory)
    with pytest.raises(GenerationError, match="could not open a context for adapter ecommerce"):
        _greedy_reply(merged, MERGE_QUESTIONS[0], "ecommerce", steps=4)
    monkeypatch.undo()
    assert _greedy_reply(merged, MERGE_QUESTIONS[0], None, steps=4)[1]  # the scheduler still answers


@needs_llama
def test_a_model_quantised_again_loads_with_its_weights_in_the_new_type_and_a_failure_leaves_no_file(tmp_path: Path) -> None:
    import gguf

    from bots.gguf_truncate import truncate_gguf
    from bots.llama_engine import LlamaEngineError, LlamaModel, quantize_model

    small = truncate_gguf(embedded_gguf_path(), 1, tmp_path / "one-block.gguf")  # quick to quantise
    out = quantize_model(small, tmp_path / "q4_0" / "one-block-Q4_0.gguf", "Q4_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.ffn_up.weight"] == "Q4_0" and types["blk.0.attn_norm.weight"] == "F32"
    model = LlamaModel(out, 1)
    assert model.n_layer == 1 and model.tokenize("hello") == LlamaModel(small, 1).tokenize("hello")
    with pytest.raises(LlamaEngineError, match="no weight type"):
        quantize_model(small, tmp_path / "x.gguf", "Q9_9")
    (tmp_path / "not.gguf").write_bytes(b"not a model")
    with pytest.raises(LlamaEngineError, match="could not quantise"):
        quantize_model(tmp_path / "not.gguf", tmp_path / "bad" / "bad.gguf", "Q4_0")
    assert list((tmp_path / "bad").iterdir()) == []


@needs_llama
def test_spare_lanes_keep_other_prompts_prefixes_while_at_most_running_replies_decode(tmp_path: Path) -> None:
    """With more lanes than running replies a new reply picks among free lanes, so a variant's
    cached prefix is not destroyed by whichever reply happened to finish first."""
    from bots.llama_backbone import LlamaCppBackbone, LlamaServingConfig, load_gguf_base

    backbone = LlamaCppBackbone(load_gguf_base(BaseModelSpec(cache_dir=tmp_path, backend="llamacpp")), config=LlamaServingConfig(lanes=4, running=2))
    try:
        assert backbone.parallel_replies == 2
        most = 0
        real_round = backbone._round

        def counting_round() -> None:
            nonlocal most
            most = max(most, len(backbone._active))
            real_round()

        backbone._round = counting_round  # type: ignore[method-assign]
        settings = GenerationSettings(max_new_tokens=6)
        prompts = [backbone.encode_text(f"<|im_start|>user\nquestion {i} about socks<|im_end|>\n<|im_start|>assistant\n") for i in range(2)]
        alone = [list(backbone.stream(ids, None, settings, GenerationStats())) for ids in prompts]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(6) as pool:  # six at once: two decode, the others wait their turn
            together = list(pool.map(lambda ids: list(backbone.stream(ids, None, settings, GenerationStats())), prompts * 3))
        assert together == alone * 3 and most == 2
        # Both prompts' KV stayed in lanes of their own: asked again, all of the prompt but its last token is reused.
        again = GenerationStats()
        list(backbone.stream(prompts[0], None, settings, again))
        assert again.cached_prompt_tokens == len(prompts[0]) - 1
    finally:
        backbone.close()


@needs_llama
def test_a_headless_copy_fed_token_vectors_embeds_bit_for_bit_as_the_copy_fed_token_ids(tmp_path: Path) -> None:
    """The detector's copy drops the output layer over the vocabulary; the vector must not move."""
    from bots.gguf_truncate import TokenRows, truncate_gguf
    from bots.llama_engine import EmbeddingContext, LlamaEngineError, LlamaModel

    source = embedded_gguf_path()
    with_vocabulary = LlamaModel(truncate_gguf(source, 2, tmp_path / "two.gguf"), 1)
    headless = LlamaModel(truncate_gguf(source, 2, tmp_path / "two-headless.gguf", headless=True), 1)
    assert headless.n_vocab == 1 and headless.n_layer == 2
    by_ids = EmbeddingContext(with_vocabulary, 64, threads=1)
    by_vectors = EmbeddingContext(headless, 64, threads=1, token_rows=TokenRows(source))
    for text in ("my dad can't lift his arm and his face looks droopy", "where is my order 4417?"):
        tokens = with_vocabulary.tokenize(text, special=False)
        np.testing.assert_array_equal(by_vectors.embed(tokens), by_ids.embed(tokens))
    assert not np.array_equal(by_vectors.embed(tokens[:3]), by_ids.embed(tokens))
    broken = EmbeddingContext(headless, 64, threads=1, token_rows=lambda tokens: np.zeros((len(tokens), 7), dtype=np.float32))
    with pytest.raises(LlamaEngineError, match="token vectors must be"):
        broken.embed(tokens)
    for context in (by_ids, by_vectors, broken):
        context.close()


@needs_llama
def test_a_q4_0_copy_embeds_close_to_the_base_formats_copy_but_not_equal(tmp_path: Path) -> None:
    """The detector's copy in Q4_0 (faster kernels): features near the Q4_1 copy's, not the same,
    which is why the detector is fitted on the features of the copy it is served with."""
    from bots.gguf_truncate import TokenRows, truncate_gguf
    from bots.llama_engine import EmbeddingContext, LlamaModel

    source = embedded_gguf_path()
    rows = TokenRows(source)
    contexts = [
        EmbeddingContext(LlamaModel(truncate_gguf(source, 2, tmp_path / f"two-{name}.gguf", headless=True, weights=weights), 1), 64, threads=1, token_rows=rows)
        for name, weights in (("base", None), ("q4_0", "Q4_0"))
    ]
    tokens = LlamaModel(source, 1).tokenize("my dad can't lift his arm and his face looks droopy", special=False)  # headless copies have no vocabulary
    base, q4_0 = (context.embed(tokens) for context in contexts)
    assert not np.array_equal(base, q4_0)
    assert float(base @ q4_0 / np.linalg.norm(base) / np.linalg.norm(q4_0)) > 0.97
    for context in contexts:
        context.close()


@needs_llama
def test_llama_logs_keep_warnings_and_errors_but_not_the_ones_our_own_choices_cause() -> None:
    from bots.llama_engine import shown_log

    assert shown_log(3, b"llama_context: n_ctx_per_seq (512) < n_ctx_train (8192)\n")
    assert shown_log(4, b"decode: failed to find a memory slot\n")
    assert not shown_log(2, b"load_tensors: loading model tensors\n")  # info
    assert not shown_log(3, b"load: adding 1 dummy tokens\n")
    assert not shown_log(3, b"llama_init_from_model: model default pooling_type is [-1], but [1] was specified\n")
    assert shown_log(4, b"load: adding 1 dummy tokens\n")  # an error is always shown


def test_a_callers_own_llama_work_runs_on_the_scheduler_thread(llama_runtime) -> None:
    assert llama_runtime.backbone.run_on_scheduler(lambda: threading.current_thread().name) == "llama-scheduler"
