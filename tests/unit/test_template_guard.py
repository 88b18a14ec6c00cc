"""The sandbox's caps: a template that runs away is stopped, named, and leaves no trace."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tunesmith.errors import UserError
from tunesmith.formatting import sandbox
from tunesmith.formatting.sandbox import RenderLimit, compile_template, render_capped
from tunesmith.formatting.template import ChatTemplate

USER = [{"role": "user", "content": "x"}]
CHATTY = "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }},{% endfor %}{% endfor %}"
SILENT = (
    "{% set ns = namespace(n=0) %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}{{ ns.n }}"
)


def test_output_cap_stops_rendering_as_soon_as_it_is_passed():
    started = time.monotonic()
    with pytest.raises(RenderLimit, match="produced more than 1,000 characters"):
        render_capped(compile_template(CHATTY, "chatty"), {}, max_chars=1000, seconds=30)
    assert time.monotonic() - started < 1  # stopped early, not after 10^10 iterations


def test_output_cap_names_the_template(monkeypatch):
    monkeypatch.setattr(sandbox, "MAX_RENDER_CHARS", 5000)
    with pytest.raises(UserError, match=r"^chat template chatty.jinja: produced more than 5,000 characters$"):
        ChatTemplate(CHATTY, name="chatty.jinja").render(USER)


def test_time_cap_names_the_template(monkeypatch):
    monkeypatch.setattr(sandbox, "RENDER_SECONDS", 0.3)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^chat template silent.jinja: rendering took longer than 0.3 s$"):
        ChatTemplate(SILENT, name="silent.jinja").render(USER)
    assert time.monotonic() - started < 2


def test_a_loop_without_output_is_stopped_by_the_alarm_and_the_previous_handler_is_restored():
    calls = []

    def mine(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        with pytest.raises(RenderLimit, match="longer than 0.2 s"):
            render_capped(compile_template(SILENT, "silent"), {}, seconds=0.2)
        assert signal.getsignal(signal.SIGALRM) is mine and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        render_capped(compile_template("{{ 1 }}", "quick"), {})
        assert signal.getsignal(signal.SIGALRM) is mine and calls == []
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_a_timer_someone_else_set_is_left_alone():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        assert render_capped(compile_template("{{ 'ok' }}", "quick"), {}) == "ok"
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < remaining <= 30 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_off_the_main_thread_the_deadline_still_stops_a_chatty_template():
    """No SIGALRM off the main thread: the deadline is checked as chunks arrive. The size cap is
    lifted so that only the deadline can stop it (a fast machine writes 4,000,000 characters in
    under 0.2 s)."""
    errors: list[BaseException] = []

    def run():
        try:
            render_capped(compile_template(CHATTY, "chatty"), {}, max_chars=10**12, seconds=0.2)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            errors.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and len(errors) == 1
    assert isinstance(errors[0], RenderLimit) and "longer than 0.2 s" in str(errors[0])


@pytest.mark.parametrize("expression", ["'x' * 10**9", "[1] * 10**8", "2 ** 100000000"])
def test_huge_repetitions_and_powers_are_refused_before_they_are_computed(expression):
    started = time.monotonic()
    with pytest.raises(UserError, match=r"chat template big.jinja: (produced more than|a power)"):
        ChatTemplate("{{ " + expression + " }}", name="big.jinja").render(USER)
    assert time.monotonic() - started < 1


def test_a_refusal_names_the_template():
    strict = ChatTemplate("{{ raise_exception('roles must alternate') }}", name="strict.jinja")
    with pytest.raises(UserError, match=r"^chat template strict.jinja refused the conversation: roles must alternate$"):
        strict.render(USER)


def test_ordinary_rendering_is_unchanged_and_leaves_no_handler_behind():
    before = signal.getsignal(signal.SIGALRM)
    template = ChatTemplate("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}", name="plain")
    assert template.render(USER * 3) == "user: x\nuser: x\nuser: x\n"
    assert signal.getsignal(signal.SIGALRM) is before
