"""Admission control (webui/admission.py): the gate itself, and what each generation handler answers when full.

No model and no server: a refused request never reaches the model. The served UI is
exercised in tests/test_ui.py and tests/test_loadtest.py.
"""

from __future__ import annotations

import threading

import gradio as gr
import pytest

from tests.gates import small_gate, wait_until
from webui.admission import AdmissionConfig, Gate, ServerBusy, admitted, chat_busy, chat_waiting, generation_events, is_busy
from webui.turns import SETTINGS_COUNT

SETTINGS = (16, 0.0, 0.95, 1.1, 0)
HISTORY = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]


def test_the_gate_admits_up_to_its_limit_then_says_how_many_are_ahead() -> None:
    gate = Gate(AdmissionConfig(max_in_flight=3))
    first, second, third = gate.admit(), gate.admit(), gate.admit()
    assert [gate.ahead_of(t) for t in (first, second, third)] == [0, 1, 2]  # one runs, the others wait in order
    with pytest.raises(ServerBusy) as refused:
        gate.admit()
    assert refused.value.ahead == 3 and "3 people are ahead of you" in str(refused.value)
    gate.leave(second)  # e.g. stopped while waiting
    assert gate.ahead_of(third) == 1 and gate.in_flight == 2
    gate.leave(first)
    assert gate.wait_turn(third, 0.01) == 0
    gate.leave(third)
    gate.leave(third)  # leaving twice is harmless
    assert gate.in_flight == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_queue_takes_newcomers_until_their_expected_wait_is_too_long() -> None:
    clock = FakeClock()
    gate = Gate(AdmissionConfig(max_in_flight=10, max_running=2, max_wait_s=25.0), clock=clock)
    first, second = gate.admit(), gate.admit()  # both run at once
    clock.now = 10.0
    gate.leave(first)
    gate.leave(second)
    assert gate.service_s == 10.0  # nothing timed before: the first reply sets the average
    running = [gate.admit(), gate.admit()]  # no wait: two lanes are free
    waiting = [gate.admit() for _ in range(5)]  # 1-5 ahead, 10 s a reply on 2 lanes: 5 s a person, up to 25 s
    assert [gate.expected_wait_s(t) for t in waiting] == [5.0, 10.0, 15.0, 20.0, 25.0]
    with pytest.raises(ServerBusy) as refused:
        gate.admit()  # the queue has room (7 of 10), but 6 ahead means a 30 s wait
    assert refused.value.ahead == 7 and refused.value.expected_wait_s == 30.0 and "a wait of about 30 s" in str(refused.value)
    clock.now = 16.0
    for ticket in running:
        gate.leave(ticket)  # took 6 s: the average moves towards it
    assert gate.service_s == pytest.approx(0.8 * (0.8 * 10 + 0.2 * 6) + 0.2 * 6)
    assert gate.ahead_of(waiting[0]) == 0 and gate.expected_wait_s(waiting[0]) == 0.0
    gate.leave(waiting[0])  # left without a turn timed from its admission: it ran from t=16
    assert gate.service_s == pytest.approx(0.8 * (0.8 * (0.8 * 10 + 0.2 * 6) + 0.2 * 6))


def test_without_a_wait_limit_only_the_queue_bound_refuses() -> None:
    clock = FakeClock()
    gate = Gate(AdmissionConfig(max_in_flight=3, max_running=1, max_wait_s=None), clock=clock)
    timed = gate.admit()
    clock.now = 500.0
    gate.leave(timed)
    tickets = [gate.admit() for _ in range(3)]
    assert gate.expected_wait_s(tickets[2]) == 1000.0
    with pytest.raises(ServerBusy) as refused:
        gate.admit()
    assert refused.value.expected_wait_s is None and refused.value.ahead == 3


def test_a_waiting_ticket_wakes_when_the_one_ahead_leaves() -> None:
    gate = Gate(AdmissionConfig(max_in_flight=2))
    running, waiting = gate.admit(), gate.admit()
    turns: list[int] = []
    waiter = threading.Thread(target=lambda: turns.append(gate.wait_turn(waiting, 10.0)))
    waiter.start()
    gate.leave(running)
    waiter.join(5.0)
    assert turns == [0]


def test_configuration_from_the_environment_and_its_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOP_MAX_IN_FLIGHT", "4")
    config = AdmissionConfig.from_env()
    assert config.max_in_flight == 4 and config.dispatch_limit == 12 < config.gradio_queue_max_size
    monkeypatch.setenv("TOP_MAX_IN_FLIGHT", "lots")
    with pytest.raises(ValueError, match="TOP_MAX_IN_FLIGHT"):
        AdmissionConfig.from_env()
    monkeypatch.delenv("TOP_MAX_IN_FLIGHT")
    assert AdmissionConfig.from_env() == AdmissionConfig()
    monkeypatch.setenv("TOP_MAX_WAIT_S", "30")
    assert AdmissionConfig.from_env().max_wait_s == 30.0
    monkeypatch.setenv("TOP_MAX_WAIT_S", "0")
    assert AdmissionConfig.from_env().max_wait_s is None  # 0: no limit on the wait, only on the queue
    monkeypatch.setenv("TOP_MAX_WAIT_S", "-5")
    with pytest.raises(ValueError, match="TOP_MAX_WAIT_S"):
        AdmissionConfig.from_env()
    monkeypatch.delenv("TOP_MAX_WAIT_S")
    assert AdmissionConfig(max_in_flight=64).worker_threads > AdmissionConfig(max_in_flight=64).dispatch_limit > 64
    for bad in (AdmissionConfig(max_in_flight=0), AdmissionConfig(max_wait_s=0), AdmissionConfig(gradio_queue_max_size=10), AdmissionConfig(service_smoothing=0)):
        with pytest.raises(ValueError):
            bad.validate()


def test_generation_events_share_one_group_above_the_limit() -> None:
    with small_gate(max_in_flight=2) as gate:
        options = generation_events()
    assert options == {"concurrency_id": "generation", "concurrency_limit": gate.config.dispatch_limit}
    assert gate.config.dispatch_limit > gate.config.max_in_flight  # refusals are not queued behind admitted requests


def test_a_wrapped_handler_runs_after_its_turn_and_always_leaves() -> None:
    @admitted(chat_busy, chat_waiting)
    def echo(message: str, history: list) -> object:
        yield history, "", f"said {message}"
        raise RuntimeError("boom")

    with small_gate(max_in_flight=2) as gate:
        ahead = gate.admit()
        frames = echo("hi", HISTORY)
        assert next(frames) == (gr.skip(), gr.skip(), "⏳ In the queue: 1 person is ahead of you…")  # status only
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(next(frames)))
        worker.start()
        gate.leave(ahead)
        worker.join(5.0)
        assert done == [(HISTORY, "", "said hi")]
        with pytest.raises(RuntimeError):
            next(frames)
        assert gate.in_flight == 0  # an error in the handler frees the place too


def test_a_handler_closed_while_waiting_frees_its_place() -> None:
    @admitted(chat_busy, chat_waiting)
    def never(message: str, history: list) -> object:
        yield history, "", "should not run"

    with small_gate(max_in_flight=2) as gate:
        gate.admit()
        frames = never("hi", [])
        next(frames)  # waiting
        assert gate.in_flight == 2
        frames.close()  # what Gradio does on Stop
        wait_until(lambda: gate.in_flight == 1, 2.0, "the closed request to leave")


def test_every_generation_handler_answers_busy_at_once_and_keeps_what_the_user_had() -> None:
    from webui.arena_tab import arena_send
    from webui.chat_tab import respond
    from webui.compare_tab import PANES, compare
    from webui.lab_tab import lab_chat

    with small_gate(max_in_flight=1) as gate:
        gate.admit()  # someone else is generating
        with pytest.warns(UserWarning, match="Server busy"):  # gr.Warning outside a request: a Python warning
            chat = list(respond("next?", HISTORY, "ecommerce", "prompt", *SETTINGS))
        assert len(chat) == 1 and chat[0][:2] == (HISTORY, "next?") and is_busy(chat[0][2])
        assert chat[0][2] == "⚠️ Server busy: 1 person is ahead of you. Your conversation is kept: send your message again in a little while."

        with pytest.warns(UserWarning):
            lab = list(lab_chat("next?", HISTORY, "ecommerce", *SETTINGS, None))
        assert len(lab) == 1 and lab[0][:2] == (HISTORY, "next?") and is_busy(lab[0][2])

        panes = [HISTORY if i == 0 else [] for i in range(len(PANES))]
        with pytest.warns(UserWarning):
            side = list(compare("next?", "all", *SETTINGS, *panes))
        assert len(side) == 1 and side[0][0] == "next?" and list(side[0][1 : 1 + len(PANES)]) == panes
        assert all(is_busy(stat) for stat in side[0][1 + len(PANES) :])

        previous_round = object()
        with pytest.warns(UserWarning):
            arena = list(arena_send("next?", "ecommerce", *SETTINGS, previous_round))
        assert len(arena) == 1 and arena[0][2] == "next?" and is_busy(arena[0][3]) and arena[0][5] is previous_round
        assert gate.in_flight == 1  # refusals take no place


def test_is_busy_tells_the_busy_answer_from_other_statuses() -> None:
    assert is_busy("⚠️ Server busy: 2 people are ahead of you.") and is_busy("Server busy: 1 person is ahead of you.")
    assert not is_busy("ecommerce-lora: first token 0.01 s") and not is_busy("⚠️ the message is empty: please type a question")
    assert len(SETTINGS) == SETTINGS_COUNT
