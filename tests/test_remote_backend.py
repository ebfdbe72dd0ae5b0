"""The remote backend (--backend openai) against this project's own API server in a second process.

The engine is ``python -m tests.api_engine`` (bots.api on the tiny model) on loopback: a
real HTTP engine in its own process. The page's respond path and the CLI run here on a
RemoteBackbone with the tiny tokenizer, and must give what the same bots give in-process.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from bots import cli
from bots.backends import build_backbone, choose_backend
from bots.base_source import BaseModelError, BaseModelSpec
from bots.chat_tokenizer import HfChatTokenizer
from bots.registry import Runtime, set_runtime
from bots.remote_backbone import RemoteBackbone, RemoteBase
from bots.remote_config import RemoteConfig, RemoteConfigError, load_config_file
from tests.tiny_model import TINY_FINGERPRINT, make_tiny_base, make_tiny_tokenizer, save_tiny_adapter
from webui.chat_tab import respond
from webui.common import message_text

KEY = "engine-key"
ROOT = Path(__file__).resolve().parents[1]
EMERGENCY = "My father has crushing chest pain right now and is sweating"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Engine:
    url: str
    adapters: Path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    adapters = tmp_path_factory.mktemp("engine") / "adapters"
    save_tiny_adapter(adapters / "ecommerce")
    save_tiny_adapter(adapters / "medical", seed=2)
    port = _free_port()
    env = {**os.environ, "TOP_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "tests.api_engine", "--port", str(port), "--adapters", str(adapters)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the engine process ended: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the engine process did not start within 120 s")
            time.sleep(0.2)
        yield Engine(f"{url}/v1", adapters)
    finally:
        process.terminate()
        process.wait(timeout=20)


def remote_runtime(url: str, adapters: Path, **config: object) -> Runtime:
    settings = RemoteConfig(url=url, api_key=KEY, read_timeout_s=30)
    backbone = RemoteBackbone(HfChatTokenizer(make_tiny_tokenizer()), RemoteBase("tiny-llama (remote)", TINY_FINGERPRINT), replace(settings, **config))  # type: ignore[arg-type]
    return Runtime.from_backbone(backbone, adapters)


@pytest.fixture()
def local(engine: Engine) -> Runtime:
    """The same bots in this process: what the remote ones must equal."""
    return Runtime.from_base(make_tiny_base(), engine.adapters)


def _chat(message: str, domain: str, method: str, max_new_tokens: int = 16, guard: bool = True) -> tuple[list, str, str]:
    frames = list(respond(message, [], domain, method, max_new_tokens, 0.0, 0.95, 1.1, 0, guard))
    return frames[-1]


@pytest.mark.parametrize(("domain", "method", "message"), [("ecommerce", "lora", "hello"), ("ecommerce", "prompt", "Do you ship to Canada?"), ("medical", "lora", "What helps with a mild headache?"), ("medical", "prompt", EMERGENCY)])
def test_the_page_through_a_remote_engine_answers_as_in_process(engine: Engine, local: Runtime, domain: str, method: str, message: str) -> None:
    variant = f"{domain}-{method}"
    expected = local.bot(variant).reply([{"role": "user", "content": message}], cli.settings_from(cli.make_parser().parse_args(["ask", "--variant", variant, "--max-new-tokens", "16", "x"])))
    runtime = remote_runtime(engine.url, engine.adapters)
    assert runtime.bot(variant).availability.ok and runtime.backbone.backend == "openai"
    set_runtime(runtime)
    try:
        history, textbox, status = _chat(message, domain, method)
    finally:
        set_runtime(None)
    assert textbox == "" and status.startswith(f"{variant}:"), status
    assert message_text(history[1]["content"]) == expected.text and expected.text  # same prompt, adapter, guard, greedy decode
    assert f"prompt {expected.stats.prompt_tokens} tokens" in status and f"{expected.stats.new_tokens} tokens" in status
    if message == EMERGENCY:
        assert "Emergency guard acted" in status


def test_the_cli_through_a_remote_engine(engine: Engine, local: Runtime) -> None:
    set_runtime(remote_runtime(engine.url, engine.adapters))
    out = io.StringIO()
    try:
        assert cli.main(["ask", "--variant", "ecommerce-lora", "--max-new-tokens", "12", "hello"], out=out) == 0
    finally:
        set_runtime(None)
    expected = local.bot("ecommerce-lora").reply([{"role": "user", "content": "hello"}], cli.settings_from(cli.make_parser().parse_args(["ask", "--variant", "ecommerce-lora", "--max-new-tokens", "12", "x"])))
    assert out.getvalue() == expected.text + "\n"


def test_prompt_as_text_gives_the_same_reply(engine: Engine, local: Runtime) -> None:
    # bots.api tokenises a text prompt as plain text, so here the markup-free LoRA prompt of a bare
    # continuation: the engine must get back exactly the ids the tokenizer renders.
    backbone = remote_runtime(engine.url, engine.adapters, prompt_format="text").backbone
    from bots.generation import GenerationSettings, GenerationStats

    ids = backbone.encode_text("The quick brown fox")
    stats = GenerationStats()
    text = "".join(backbone.stream(ids, "ecommerce", GenerationSettings(max_new_tokens=8), stats))
    local_stats = GenerationStats()
    assert text == "".join(local.backbone.stream(ids, "ecommerce", GenerationSettings(max_new_tokens=8), local_stats)) and stats.new_tokens == local_stats.new_tokens == 8


def test_a_wrong_engine_key_is_a_clear_refusal(engine: Engine) -> None:
    set_runtime(remote_runtime(engine.url, engine.adapters, api_key="wrong"))
    try:
        history, _, status = _chat("hello", "ecommerce", "lora")
    finally:
        set_runtime(None)
    assert "refused the request (HTTP 401" in status and "API key" in status


def _silent_server() -> tuple[str, socket.socket]:
    """Accepts connections and never answers: an engine that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: listener.accept()[0], None)), daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/v1", listener


def test_an_engine_down_or_hanging_is_a_clear_note_and_the_page_stays_up(engine: Engine) -> None:
    from gradio_client import Client

    import ui

    hanging_url, listener = _silent_server()
    cases = {f"http://127.0.0.1:{_free_port()}/v1": "is unreachable", hanging_url: "did not answer in time"}
    _, url, _ = ui.demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        for engine_url, words in cases.items():
            set_runtime(remote_runtime(engine_url, engine.adapters, read_timeout_s=0.5, connect_timeout_s=0.5))
            started = time.monotonic()
            history, textbox, status = Client(url, verbose=False).predict("hello", [], "ecommerce", "lora", 16, 0.0, 0.95, 1.1, api_name="/chat")
            assert words in status and "generation stopped" in status and "Traceback" not in status, status
            assert time.monotonic() - started < 20
            assert message_text(history[0]["content"]) == "hello"  # the conversation is kept
        set_runtime(remote_runtime(engine.url, engine.adapters))  # the page is still up: with a live engine it answers
        history, _, status = Client(url, verbose=False).predict("hello", [], "ecommerce", "lora", 16, 0.0, 0.95, 1.1, api_name="/chat")
        assert status.startswith("ecommerce-lora:") and message_text(history[1]["content"])
    finally:
        ui.demo.close()
        set_runtime(None)
        listener.close()


def test_remote_backend_settings_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOP_ENGINE_URL", raising=False)
    assert choose_backend(BaseModelSpec(backend="openai")).name == "openai"
    assert choose_backend(BaseModelSpec(backend="auto")).name != "openai"  # never picked by auto
    with pytest.raises(BaseModelError, match="TOP_ENGINE_URL"):
        build_backbone(BaseModelSpec(backend="openai"))
    bad = tmp_path / "engine.yaml"
    bad.write_text("base: x\nadaptors: {}\n")
    with pytest.raises(RemoteConfigError, match="unknown setting"):
        load_config_file(bad)
    bad.write_text("prompt_format: json\n")
    with pytest.raises(RemoteConfigError, match="prompt_format"):
        replace(load_config_file(bad), url="http://127.0.0.1:1/v1").validate()
    shipped = RemoteConfig.from_env()
    assert shipped.names.model_for(None) == shipped.names.base and shipped.names.model_for("medical") == "medical"
    with pytest.raises(RemoteConfigError, match="no model for adapter"):
        shipped.names.model_for("legal")


def test_an_adapter_the_engine_config_does_not_name_is_unavailable(engine: Engine, tmp_path: Path) -> None:
    config = tmp_path / "engine.yaml"
    config.write_text("base: smollm2-135m-instruct\nadapters:\n  ecommerce: ecommerce\n")
    runtime = remote_runtime(engine.url, engine.adapters, names=load_config_file(config).names)
    assert runtime.bot("ecommerce-lora").availability.ok
    assert not runtime.bot("medical-lora").availability.ok and "no model for adapter 'medical'" in runtime.bot("medical-lora").availability.reason


def test_the_embedded_tokenizer_counts_like_the_llama_backend(tmp_path: Path) -> None:
    """Without weights (llama.cpp vocab_only), the remote backend renders and counts the real base's prompts as the local backend does."""
    pytest.importorskip("llama_cpp")
    from bots.chat_tokenizer import GgufChatTokenizer, load_chat_tokenizer
    from bots.llama_backbone import LlamaCppBackbone, load_gguf_base
    from prompts import load_prompt_spec, render_prompted

    spec = BaseModelSpec(cache_dir=tmp_path)
    tokenizer, name, fingerprint = load_chat_tokenizer(spec)
    assert isinstance(tokenizer, GgufChatTokenizer)
    local = LlamaCppBackbone(load_gguf_base(spec))
    try:
        messages = render_prompted(load_prompt_spec("medical"), [{"role": "user", "content": "Is 38.5 C a fever? café ✓"}])
        assert tokenizer.encode(messages) == local.encode(messages) and len(local.encode(messages)) > 100
        text = "Call 911 now: café ✓"
        assert tokenizer.encode_text(text) == local.encode_text(text) and tokenizer.decode_text(local.encode_text(text)) == text
        assert "<|im_start|>" in tokenizer.render(local.encode(messages)) and fingerprint == local.base.fingerprint and name == local.base.name
    finally:
        local.close()
