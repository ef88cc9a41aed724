"""Rendering: splitting never loses or reorders a character; messages stay within limits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.models import RunKind, RunRecord, RunStatus
from handlers import render

texts = st.text(alphabet=st.characters(min_codepoint=1, exclude_categories=("Cs",)), max_size=3000)
slack_like = st.lists(
    st.sampled_from(["word ", "\n", "\n\n", "🚀", "é", "```", "*bold* ", "x" * 50, "日本語 "]),
    max_size=400,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=texts | slack_like, limit=st.integers(min_value=4, max_value=600))
def test_split_text_keeps_every_character_in_order_within_the_limit(text, limit):
    pieces = render.split_text(text, limit)
    assert "".join(pieces) == text
    assert all(len(p.encode("utf-8")) <= limit for p in pieces)
    assert all(pieces) or pieces == [""]


@settings(max_examples=200, deadline=None)
@given(text=texts | slack_like, limit=st.integers(min_value=8, max_value=600))
def test_tail_that_fits_is_a_suffix_within_the_limit(text, limit):
    tail = render.tail_that_fits(text, limit)
    assert len(tail.encode("utf-8")) <= limit
    if tail == text:
        return
    assert tail.startswith("…") and text.endswith(tail[1:])


def test_split_prefers_paragraph_then_line_then_word_boundaries():
    text = "a" * 50 + "\n\n" + "b" * 30 + "\n" + "c" * 10 + " " + "d" * 5
    assert render.split_text(text, 60) == [
        "a" * 50 + "\n\n",
        "b" * 30 + "\n" + "c" * 10 + " " + "d" * 5,
    ]
    assert render.split_text("one two three", 9) == ["one two ", "three"]
    assert render.split_text("x" * 10, 4) == ["xxxx", "xxxx", "xx"]


def test_multibyte_text_is_measured_in_bytes():
    pieces = render.split_text("🚀" * 10, 8)
    assert pieces == ["🚀🚀"] * 5


def run(**kwargs) -> RunRecord:
    values = dict(
        kind=RunKind.ASK, prompt="what is <b> & why", user_id="U1", model="m", command="/ask"
    )
    values.update(kwargs)
    return RunRecord(**values)


def test_asked_line_escapes_slack_control_characters():
    line = render.asked_line("U1", "ping <!channel> & <@U2>")
    assert "<!channel>" not in line and "&lt;!channel&gt;" in line and "&amp;" in line


def test_final_messages_split_and_mark_the_continuation():
    record = run(
        output="para\n\n" * 2000, status=RunStatus.SUCCEEDED, duration_ms=2000, output_tokens=100
    )
    first, *rest = render.final_messages(record)
    assert rest and "continued in thread" in str(first.blocks)
    shown = "".join(b["text"] for m in [first, *rest] for b in m.blocks if b["type"] == "markdown")
    assert shown == record.output
    assert "50 tok/s" in str(first.blocks)
    assert all(len(m.text) <= 150 for m in [first, *rest])


def test_failure_notice_keeps_partial_text_and_says_why():
    record = run(
        output="half an answer", status=RunStatus.FAILED, error="The model did not answer in time"
    )
    [message] = render.final_messages(record)
    body = str(message.blocks)
    assert "half an answer" in body and "⚠️ The model did not answer in time" in body
    assert "Partial answer kept above" in body
    assert "actions" not in body


def test_live_message_has_thinking_line_and_stop_button():
    message = render.live_message(run(), "", None)
    kinds = [b["type"] for b in message.blocks]
    assert kinds == ["context", "markdown", "context", "actions"]
    assert "thinking" in str(message.blocks)
