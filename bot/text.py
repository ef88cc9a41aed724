"""Text helpers shared by the tool layer, the runner and the Slack renderers."""

from __future__ import annotations


def one_line(text: str) -> str:
    """`text` on one line: every run of white space becomes one space."""
    return " ".join(text.split())


def cap(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, a cut marked with "…"."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cut_marked(text: str, limit: int) -> str:
    """`text` when it has at most `limit` characters; else its start followed by a note
    that it was cut and how long it was, `limit` characters in all (longer only when
    `limit` cannot hold the note)."""
    if len(text) <= limit:
        return text
    note = f"… [cut: {len(text):,} characters in all]"
    return text[: max(0, limit - len(note))] + note


def preview(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters."""
    return cap(one_line(text), limit)


def clean_text(text: str) -> str:
    """`text` fit to store and send: NUL characters removed, and each lone surrogate (which
    no UTF-8 encoder accepts) replaced by U+FFFD; a valid surrogate pair becomes its
    character. Clean text is returned as is."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # UTF-16 round trip: pairs rejoin into one character, lone halves become U+FFFD.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def clean_strings(value: object) -> object:
    """`value`, a JSON document (dicts, lists, strings, numbers), with every string value
    cleaned (`clean_text`); dicts and lists are changed in place. Iterative: any depth."""
    if isinstance(value, str):
        return clean_text(value)
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            slots = list(node.items())
        elif isinstance(node, list):
            slots = list(enumerate(node))
        else:
            continue
        for slot, item in slots:
            if isinstance(item, str):
                cleaned = clean_text(item)
                if cleaned is not item:
                    node[slot] = cleaned
            elif isinstance(item, dict | list):
                pending.append(item)
    return value
