"""The Gradio UI served on loopback and driven through gradio_client, on the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from bots.base_model import LoadedBase
from bots.registry import Runtime, set_runtime
from tests.tiny_model import save_tiny_adapter


@pytest.fixture()
def served(tiny_base: LoadedBase, tmp_path: Path) -> Iterator[tuple[Client, Runtime]]:
    save_tiny_adapter(tmp_path / "ecommerce")
    runtime = Runtime.from_base(tiny_base, tmp_path)
    set_runtime(runtime)
    import ui

    _, url, _ = ui.demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(url, verbose=False), runtime
    finally:
        ui.demo.close()
        set_runtime(None)


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def test_chat_streams_a_reply_and_keeps_history(served: tuple[Client, Runtime]) -> None:
    client, runtime = served
    job = client.submit("hello", [], "ecommerce", "lora", 16, 0.0, 0.95, 1.1, api_name="/chat")
    updates = list(job)
    history, textbox, status = job.outputs()[-1]
    assert len(updates) >= 2  # streamed: partial updates before the final one
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert _text(history[0]) == "hello" and textbox == ""
    expected = runtime.bots["ecommerce-lora"].reply([{"role": "user", "content": "hello"}])
    assert _text(history[1]) == expected.text[: len(_text(history[1]))] and _text(history[1])
    assert status.startswith("ecommerce-lora:") and "tok/s" in status
    # A second turn sends the history back.
    history2, _, _ = client.predict("thanks", history, "ecommerce", "prompt", 16, 0.0, 0.95, 1.1, api_name="/chat")
    assert [m["role"] for m in history2] == ["user", "assistant", "user", "assistant"]


def test_bad_input_keeps_history_and_text(served: tuple[Client, Runtime]) -> None:
    client, _ = served
    history, textbox, status = client.predict("   ", [], "medical", "prompt", 16, 0.0, 0.95, 1.1, api_name="/chat")
    assert history == [] and "empty" in status
    history, textbox, status = client.predict("hi", [], "medical", "lora", 16, 0.0, 0.95, 1.1, api_name="/chat")
    assert history == [] and textbox == "hi" and "unavailable" in status
    with pytest.raises(Exception, match="maximum"):  # the page's sliders refuse out-of-range values
        client.predict("hi", [], "medical", "prompt", 16, 9.0, 0.95, 1.1, api_name="/chat")


def test_handler_refuses_bad_settings_without_losing_anything(served: tuple[Client, Runtime]) -> None:
    from webui.chat_tab import respond

    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    outputs = list(respond("next?", history, "medical", "prompt", -3, 0.0, 0.95, 1.1))
    assert outputs == [(history, "next?", "⚠️ max_new_tokens must be an integer from 1 to 1024")]


def test_a_prompt_that_cannot_fit_the_context_is_a_clear_message(served: tuple[Client, Runtime]) -> None:
    from webui.chat_tab import respond

    _, runtime = served
    runtime.backbone.context_tokens = 600  # the tiny tokenizer makes the static sheet ~2000 tokens
    try:
        outputs = list(respond("hi", [], "ecommerce", "static", 16, 0.0, 0.95, 1.1))
    finally:
        runtime.backbone.context_tokens = 2048
    assert outputs[0][1] == "hi" and "does not fit the 600-token context" in outputs[0][2]


def test_the_status_says_when_the_emergency_guard_acted(served: tuple[Client, Runtime]) -> None:
    client, _ = served
    message = "my dad's face is drooping and he can't lift his arm"
    history, _, status = client.predict(message, [], "medical", "prompt", 16, 0.0, 0.95, 1.1, 0, True, api_name="/chat")
    assert "Emergency guard acted" in status and "911" in _text(history[1])
    history, _, status = client.predict(message, [], "medical", "prompt", 16, 0.0, 0.95, 1.1, 0, False, api_name="/chat")
    assert "guard" not in status


def test_markup_is_escaped_for_display_and_restored_for_the_model(served: tuple[Client, Runtime]) -> None:
    from webui.common import to_conversation

    client, runtime = served
    message = "is 3 < 5 & <i>why</i>?"
    history, _, _ = client.predict(message, [], "ecommerce", "lora", 16, 0.0, 0.95, 1.1, api_name="/chat")
    assert _text(history[0]) == "is 3 &lt; 5 &amp; &lt;i&gt;why&lt;/i&gt;?"
    assert to_conversation(history)[0] == {"role": "user", "content": message}


def test_cancelling_a_reply_frees_the_model_within_a_second(served: tuple[Client, Runtime]) -> None:
    import time

    client, runtime = served
    # Slow the tiny model down so a 512-token reply would take ~10 s.
    hook = runtime.backbone.base.model.register_forward_pre_hook(lambda *_: time.sleep(0.02))
    try:
        job = client.submit("hello", [], "ecommerce", "lora", 512, 0.0, 0.95, 1.0, api_name="/chat")
        deadline = time.monotonic() + 20
        while not runtime.backbone.lock.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runtime.backbone.lock.locked(), "generation never started"
        time.sleep(0.3)
        cancelled_at = time.monotonic()
        job.cancel()
        while runtime.backbone.lock.locked() and time.monotonic() - cancelled_at < 5:
            time.sleep(0.01)
        freed_after = time.monotonic() - cancelled_at
    finally:
        hook.remove()
    assert freed_after < 1.0, f"the model stayed busy {freed_after:.2f}s after the cancel"


# --- a full server: admission control (webui/admission.py) ------------------------------------


def _one_turn(client: Client) -> list[dict]:
    """A conversation of one exchange, as the page sends it back."""
    return client.predict("hi", [], "ecommerce", "prompt", 16, 0.0, 0.95, 1.1, api_name="/chat")[0]


def test_every_launch_gives_gradio_a_worker_thread_for_each_place_in_the_queue(served: tuple[Client, Runtime]) -> None:
    import ui
    from webui.admission import current_gate

    config = current_gate().config
    assert ui.demo.max_threads == config.worker_threads > config.dispatch_limit > config.max_in_flight >= 64


def test_a_full_server_answers_busy_at_once_and_the_running_reply_completes(served: tuple[Client, Runtime]) -> None:
    import time

    from tests.gates import small_gate, wait_until
    from webui.admission import is_busy

    client, runtime = served
    other = Client(client.src, verbose=False)  # a second person
    HISTORY = _one_turn(other)
    with small_gate(max_in_flight=1) as gate:
        runtime.backbone.lock.acquire()  # a slow generation: the first request holds its place until released
        try:
            first = client.submit("hello", [], "ecommerce", "lora", 16, 0.0, 0.95, 1.1, api_name="/chat")
            wait_until(lambda: gate.in_flight == 1, what="the first request to be admitted")
            started = time.monotonic()
            history, textbox, status = other.predict("next?", HISTORY, "ecommerce", "prompt", 16, 0.0, 0.95, 1.1, api_name="/chat")
            refused_after = time.monotonic() - started
        finally:
            runtime.backbone.lock.release()
        assert is_busy(status) and "1 person is ahead of you" in status and "a little while" in status
        assert history == HISTORY and textbox == "next?"  # the conversation and the typed message stay
        assert refused_after < 5.0, f"the busy answer took {refused_after:.1f}s"
        history, _, status = first.result(timeout=30)
        assert status.startswith("ecommerce-lora:") and [m["role"] for m in history] == ["user", "assistant"]
        wait_until(lambda: gate.in_flight == 0, what="the first request to leave")
        _, _, status = other.predict("next?", HISTORY, "ecommerce", "prompt", 16, 0.0, 0.95, 1.1, api_name="/chat")
        assert status.startswith("ecommerce-prompt:")  # room again: the retry is answered


def test_a_waiting_request_shows_people_ahead_and_stop_frees_its_place(served: tuple[Client, Runtime]) -> None:
    from tests.gates import small_gate, wait_until
    from webui.admission import waiting_text

    client, runtime = served
    second, third = Client(client.src, verbose=False), Client(client.src, verbose=False)
    HISTORY = _one_turn(second)
    with small_gate(max_in_flight=3) as gate:
        runtime.backbone.lock.acquire()
        try:
            first = client.submit("hello", [], "ecommerce", "lora", 16, 0.0, 0.95, 1.1, api_name="/chat")
            wait_until(lambda: gate.in_flight == 1, what="the first request to be admitted")
            waiting = second.submit("next?", HISTORY, "ecommerce", "prompt", 16, 0.0, 0.95, 1.1, api_name="/chat")
            wait_until(lambda: gate.in_flight == 2, what="the second request to be admitted")
            stopped = third.submit("later", [], "medical", "prompt", 16, 0.0, 0.95, 1.1, api_name="/chat")
            wait_until(lambda: gate.in_flight == 3, what="the third request to be admitted")
            wait_until(lambda: any(o[2] == waiting_text(1) for o in waiting.outputs()), what="the 'people ahead' status")
            stopped.cancel()
            wait_until(lambda: gate.in_flight == 2, what="the stopped request to leave")
        finally:
            runtime.backbone.lock.release()
        assert first.result(timeout=30)[2].startswith("ecommerce-lora:")
        history, _, status = waiting.result(timeout=30)
        assert status.startswith("ecommerce-prompt:") and len(history) == 4
        wait_until(lambda: gate.in_flight == 0, what="every request to leave")
