"""Untrusted text made safe for Slack: no broadcast, no mention, no disguised link, and
ordinary Markdown left as it was."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.models import RunKind, RunRecord, RunStatus
from bot.query import unescape
from handlers import render, untrusted
from handlers.stream_sink import task_chunk

BROADCASTS = ["<!channel>", "<!here>", "<!everyone>", "<!subteam^S123>", "<!subteam^S1|@eng>"]
# What Slack would read as a ping or a hidden target, if it reached it unescaped.
PING = re.compile(r"<(?:!(?:channel|here|everyone|group|subteam)\b|@|#)", re.IGNORECASE)
LABELLED_LINK = re.compile(r"<[a-z][a-z0-9+.-]*:[^\s<>|]*\|", re.IGNORECASE)
PING_WORD = re.compile(r"(?<![\w@])@(?:channel|here|everyone|group)\b", re.IGNORECASE)
DISGUISED = "<https://evil.example|https://sso.company.example>"


def unsafe(text: str) -> list[str]:
    """What in `text` could ping someone or hide a link's target."""
    return [m[0] for p in (PING, LABELLED_LINK, PING_WORD) for m in p.finditer(text)]


pieces = st.sampled_from(
    [
        "word ",
        "\n",
        "\n\n",
        "`",
        "```\n",
        "~~~\n",
        "<",
        ">",
        "&",
        "&lt;",
        "&amp;",
        ";",
        "@",
        "@here",
        "here",
        "channel",
        "!",
        "[",
        "]",
        "(",
        ")",
        "](",
        "|",
        "https://evil.example",
        "sso.company.example",
        "mailto:a@b.example",
        "*",
        "_",
        "\\",
        "é🚀",
        *BROADCASTS,
        DISGUISED,
        "<@U123>",
    ]
)
markdownish = st.lists(pieces, max_size=60).map("".join)
anything = st.text(max_size=400)


# -- nobody pinged, nothing hidden ---------------------------------------------------------


@pytest.mark.parametrize("escape", [untrusted.markdown, untrusted.mrkdwn])
@pytest.mark.parametrize("attack", [*BROADCASTS, "<!CHANNEL>", "<@U123>", "<#C1>", DISGUISED])
def test_slack_references_are_shown_not_parsed(escape, attack):
    for text in (attack, f"hi {attack} there", f"`{attack}`", f"```\n{attack}\n```"):
        shown = escape(text)
        assert not unsafe(shown), (text, shown)
        assert "&lt;" in shown  # Slack's own escape: it shows `<` and parses nothing


@settings(max_examples=400, deadline=None)
@given(text=markdownish | anything)
def test_no_escaped_text_can_ping_or_hide_a_target(text):
    assert not unsafe(untrusted.markdown(text))
    assert not unsafe(untrusted.mrkdwn(text))


@pytest.mark.parametrize("word", ["@channel", "@here", "@everyone", "@HERE", "@group"])
def test_plain_broadcast_words_get_an_invisible_joiner(word):
    shown = untrusted.markdown(f"Hey {word}, look.")
    assert shown == f"Hey @{untrusted.WORD_JOINER}{word[1:]}, look."
    assert untrusted.mrkdwn(word) == f"@{untrusted.WORD_JOINER}{word[1:]}"
    for ordinary in ("ops@here.example", "@heresy", "@channels"):
        assert untrusted.markdown(ordinary) == ordinary


def test_a_labelled_slack_link_shows_its_real_target():
    assert untrusted.markdown(f"log in: {DISGUISED}") == (
        "log in: &lt;https://evil.example|https://sso.company.example>"
    )
    assert untrusted.mrkdwn(DISGUISED) == (
        "&lt;https://evil.example|https://sso.company.example&gt;"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "[https://sso.company.example](https://evil.example)",
            "[https://sso.company.example] (https://evil.example)",
        ),
        (
            "[sso.company.example](https://evil.example/x)",
            "[sso.company.example] (https://evil.example/x)",
        ),
        (
            "[company.example](https://company.example.evil.example)",
            "[company.example] (https://company.example.evil.example)",
        ),
        ("[`https://a.example`](https://b.example)", "[`https://a.example`] (https://b.example)"),
        (
            "[**a.example**](<https://b.example>)",
            "[**a.example**] ([https://b.example](https://b.example))",
        ),
        (
            "[github.com/us/repo](https://github.com/them/repo)",
            "[github.com/us/repo] (https://github.com/them/repo)",
        ),
        ("![https://a.example](https://b.example)", "![https://a.example] (https://b.example)"),
        (
            "[[https://a.example](https://b.example)](https://c.example)",
            "[[https://a.example] (https://b.example)] (https://c.example)",
        ),
        # Code binds tighter than brackets: this label is "https://a.example `[` ".
        (
            "[https://a.example `[` ](https://b.example)",
            "[https://a.example `[` ] (https://b.example)",
        ),
        ("see [1]\n\n[1]: https://evil.example", "see [1]\n\n[1] : https://evil.example"),
        ("[a\\]b]: https://evil.example", "[a\\]b] : https://evil.example"),
    ],
)
def test_a_markdown_link_whose_label_names_another_address_shows_its_target(text, shown):
    assert untrusted.markdown(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "[the docs](https://docs.python.org/3/)",
        "[python.org](https://docs.python.org/3/library/re.html)",
        "[docs.python.org/3](https://docs.python.org/3/library/)",
        "[www.example.com](https://example.com)",
        "[https://example.com/a?b=1](https://example.com/a?b=1)",
        "[mail us](mailto:team@example.com)",
        "[1] and [x] (aside)",
    ],
)
def test_an_honest_link_stays_a_link(text):
    assert untrusted.markdown(text) == text


def test_a_link_too_long_to_judge_is_broken_up():
    label = "x" * untrusted.MAX_LABEL + " https://sso.company.example"
    shown = untrusted.markdown(f"[{label}](https://evil.example)")
    assert shown == f"[{label}] (https://evil.example)"


@pytest.mark.parametrize(
    "text",
    [
        "](" * 50_000,
        "[" * 50_000 + "](x)" * 50_000,
        "[a](" * 25_000,
        "` " * 50_000,
        "`` ` " * 20_000,
        "a" * 100_000,
        "[" + "a." * 50_000 + "](x)",
    ],
)
def test_hostile_text_is_escaped_in_linear_time(text):
    import time

    started = time.process_time()
    untrusted.markdown(text)
    untrusted.stable_end(text)
    # Generous for a loaded machine; a quadratic escape of 100 KB takes minutes.
    assert time.process_time() - started < 5


# -- ordinary Markdown keeps working -------------------------------------------------------


ORDINARY = """# Plan

**Bold**, _italic_, ~~struck~~ and `code`; a [link](https://example.com/page).

> A quote > with an arrow.

1. first
2. second
   - nested

```python
if a < b and c > d:
    print("<div>&amp;</div>", {"x": 1})  # <!-- html -->
```

| a | b |
|---|---|
| 1 | 2 |
"""


def test_ordinary_markdown_is_left_as_it_was():
    assert untrusted.markdown(ORDINARY) == ORDINARY


def test_prose_escapes_only_what_slack_would_read():
    assert untrusted.markdown("x < y & z, R&D, &lt; is how you write <") == (
        "x &lt; y & z, R&D, &amp;lt; is how you write &lt;"
    )
    assert untrusted.markdown("see <https://example.com/a>") == (
        "see [https://example.com/a](https://example.com/a)"
    )
    # In code Markdown decodes no entity: only what Slack would parse is escaped.
    assert untrusted.markdown("`a < b && <!here>` `Array<A|B>`") == (
        "`a < b && &lt;!here>` `Array<A|B>`"
    )


plain = st.text(
    alphabet=st.characters(
        min_codepoint=1, exclude_categories=("Cs",), exclude_characters="<>&@[]`\\"
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(text=plain)
def test_text_without_slack_syntax_round_trips(text):
    assert untrusted.markdown(text) == text
    assert untrusted.mrkdwn(text) == text


@settings(max_examples=300, deadline=None)
@given(text=markdownish | anything)
@example(text="@here <!here> & &amp;")
def test_mrkdwn_is_shown_exactly_as_typed(text):
    """Slack decodes its three escapes for display: the reader sees the text as typed."""
    shown = untrusted.mrkdwn(text).replace(untrusted.WORD_JOINER, "")
    assert unescape(shown) == text.replace(untrusted.WORD_JOINER, "")


# -- streaming and cutting -----------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(text=markdownish, data=st.data())
def test_the_stable_part_of_a_growing_answer_escapes_to_a_beginning_of_the_whole(text, data):
    """What a native stream has appended stays a beginning of the escaped answer, however
    the answer goes on."""
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    growing = text[:cut]
    sent = untrusted.markdown(growing[: untrusted.stable_end(growing)])
    assert untrusted.markdown(text).startswith(sent)


def test_stable_end_holds_back_only_what_may_change():
    ending = "All good. "
    assert untrusted.stable_end(ending) == len(ending)
    for held, kept in [
        ("[https://sso.example](https://ev", "[https://sso.example]"),  # the target decides
        ("`a <", ""),  # code or not decides
        ("&am", ""),
        ("@her", ""),
        ("<https://a.example", ""),
        ("[https://sso.example", "[https://sso.example"),  # a label alone is shown as is
    ]:
        assert untrusted.stable_end(ending + held) == len(ending + kept), held
    done = "[x](https://a.example) done `code`"
    assert untrusted.stable_end(done) == len(done)


@settings(max_examples=200, deadline=None)
@given(text=markdownish | anything, limit=st.integers(min_value=16, max_value=400))
def test_split_answer_escapes_each_piece_within_the_limit(text, limit):
    pieces = render.split_answer(text, limit)
    assert "".join(raw for raw, _ in pieces) == text
    for raw, shown in pieces:
        assert raw and shown == untrusted.markdown(raw)
        assert len(shown.encode()) <= limit


@settings(max_examples=200, deadline=None)
@given(text=markdownish | anything, limit=st.integers(min_value=16, max_value=400))
def test_answer_tail_is_safe_and_fits(text, limit):
    shown = render.answer_tail(text, limit)
    assert len(shown.encode()) <= limit and not unsafe(shown)


@settings(max_examples=200, deadline=None)
@given(text=markdownish | anything, limit=st.integers(min_value=1, max_value=300))
def test_fit_is_safe_and_within_the_limit(text, limit):
    shown = untrusted.fit(text, limit, untrusted.mrkdwn)
    assert len(shown) <= limit and not unsafe(shown)


# -- every place that shows untrusted text ------------------------------------------------


def attacked_run(**fields) -> RunRecord:
    values = {
        "kind": RunKind.ASK,
        "prompt": "summarise <!channel>",
        "user_id": "U1",
        "model": "<!here>",
        "output": f"Done <!channel> {DISGUISED} <!subteam^S123> @everyone",
        "status": RunStatus.FAILED,
        "error": "provider said <!everyone>",
        "tool_calls": [{"name": "<!here>", "ok": False}],
        "duration_ms": 1000,
    }
    return RunRecord(**(values | fields))


def test_every_rendered_message_is_safe():
    from bot.board import BoardItem, BoardView, ItemStatus
    from bot.models import Progress, ToolState, ToolTask

    run = attacked_run()
    progress = Progress(output_tokens=3, elapsed_s=1.0, tools=("🔧 fetch_url <!here>",))
    view = BoardView(
        title="Team task",
        phase="working",
        items=[
            BoardItem(
                label="*Researcher* — <!channel>", status=ItemStatus.FAILED, detail="<!here>"
            ),
            BoardItem(
                label="*Writer* — ok", status=ItemStatus.CANCELLED, detail="Stopped by <@U9>"
            ),
        ],
        summary="<!subteam^S1>",
    )
    messages = [
        render.live_message(run, run.output, progress),
        render.live_message(run, run.output, progress, heading="*Analyst* — <!here>"),
        *render.final_messages(run),
        *render.final_messages(run, heading="*Analyst* — <!here>"),
        render.board_message(run, view, final=False),
        render.board_message(run, view, final=True),
    ]
    for message in messages:
        assert not unsafe(message.text), message.text
        assert not unsafe(str(message.blocks).replace("<@U1>", "").replace("<@U9>", ""))
    assert "evil.example" in str(render.final_messages(run)[0].blocks)
    task = ToolTask("t1", "fetch_url <!channel>", ToolState.FAILED, "failed: <!here>")
    assert not unsafe(str(task_chunk(task)))


def test_the_bots_own_mentions_stay_mentions():
    run = attacked_run(status=RunStatus.CANCELLED, error="Stopped by <@U9>", output="")
    [message] = render.final_messages(run)
    assert "<@U1> asked" in str(message.blocks)  # who asked
    assert "Stopped by <@U9>" in str(message.blocks)  # who stopped it


def test_history_shows_prompts_and_outputs_without_pinging():
    from datetime import UTC, datetime

    from handlers import admin_render

    run = attacked_run(
        prompt="ask <!here> and @channel",
        output="@everyone look: <!channel> " + DISGUISED,
        agent="<!here>",
        command="/ask",
        channel_id="C1",
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    shown = [
        admin_render.run_list([run], described=[], more=None, continued=False),
        admin_render.run_detail(run, [run]),
    ]
    for message in shown:
        text = str(message.blocks).replace("<@U1>", "").replace("<#C1>", "")
        assert not unsafe(text) and not unsafe(message.text)
    assert "evil.example" in str(shown[1].blocks)
