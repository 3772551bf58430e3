"""Long replies as a few text messages: split at paragraphs, then sentences, then words."""

from __future__ import annotations

import pytest

from pyloto_cli.domain import outbound as ob
from pyloto_cli.domain.long_reply import reply_bodies, split_text
from pyloto_cli.domain.reply import ListSection, Reply, ReplyKind, ReplyOption
from pyloto_cli.domain.webhook import Recipient

PEER = Recipient(to="+15550001234")


def paragraphs(count: int, size: int) -> list[str]:
    """`count` distinct paragraphs of about `size` characters, of sentences of words."""
    out = []
    for n in range(count):
        sentence = f"Paragraph {n} says something useful here. "
        out.append((sentence * (size // len(sentence) + 1))[:size].rstrip() + ".")
    return out


def test_a_short_text_is_one_part() -> None:
    assert split_text("  hello there  ") == ["hello there"]
    assert split_text("") == []


def test_a_9000_character_answer_is_three_parts_at_paragraph_breaks() -> None:
    paras = paragraphs(10, 898)
    text = "\n\n".join(paras)
    assert 9000 <= len(text) < 9100
    parts = split_text(text)
    assert len(parts) == 3
    assert all(ob.wa_len(p) <= ob.TEXT_MAX for p in parts)
    # every cut is a paragraph break: the parts are whole paragraphs, in order, nothing lost
    assert "\n\n".join(parts) == text
    assert parts[0].endswith(paras[3]) or parts[0].endswith(paras[4])


def test_without_paragraphs_the_cut_is_at_a_sentence_end() -> None:
    text = "One short sentence. " * 300  # 6,000 characters, no paragraph break
    parts = split_text(text)
    assert len(parts) == 2
    assert parts[0].endswith("sentence.")
    assert " ".join(parts) == text.strip()


def test_without_sentences_the_cut_is_at_a_word_boundary() -> None:
    text = " ".join(f"word{n}" for n in range(1200))  # about 9,600 characters, one sentence
    parts = split_text(text)
    assert len(parts) == 3
    assert all(ob.wa_len(p) <= ob.TEXT_MAX for p in parts)
    assert " ".join(parts) == text  # no word was cut in two


def test_one_unbroken_word_is_cut_where_it_must_be_without_splitting_an_emoji() -> None:
    text = "a" * 4095 + "👍" + "b" * 10
    parts = split_text(text)
    assert parts == ["a" * 4095, "👍" + "b" * 10]


def test_past_max_parts_the_last_part_is_cut_at_a_word_with_an_ellipsis() -> None:
    text = " ".join(f"word{n}" for n in range(4000))  # about 28,000 characters
    parts = split_text(text, max_parts=4)
    assert len(parts) == 4
    assert parts[-1].endswith("…")
    assert ob.wa_len(parts[-1]) <= ob.TEXT_MAX
    assert parts[-1][:-1].split()[-1] in text.split()  # the last word shown is whole
    assert split_text(text, max_parts=1)[0].endswith("…")


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_parts"):
        split_text("x", max_parts=0)


def test_a_long_text_reply_becomes_ordered_text_bodies_with_the_callback() -> None:
    text = "\n\n".join(paragraphs(10, 898))
    bodies = reply_bodies(Reply(text=text), PEER, callback_data="wamid.IN")
    assert [b["type"] for b in bodies] == ["text"] * 3
    assert {b["biz_opaque_callback_data"] for b in bodies} == {"wamid.IN"}
    assert "\n\n".join(b["text"]["body"] for b in bodies) == text


def test_an_interactive_reply_that_fits_is_one_body() -> None:
    reply = Reply(text="Pick one", kind=ReplyKind.BUTTONS, buttons=(ReplyOption("a", "A"),))
    [body] = reply_bodies(reply, PEER)
    assert body["type"] == "interactive"


@pytest.mark.parametrize("kind", [ReplyKind.BUTTONS, ReplyKind.LIST])
def test_an_interactive_body_over_its_limit_falls_back_to_split_text(kind: ReplyKind) -> None:
    options = (ReplyOption("a", "Alpha"), ReplyOption("b", "Beta"))
    text = "\n\n".join(paragraphs(6, 900))
    reply = Reply(
        text=text,
        kind=kind,
        buttons=options if kind is ReplyKind.BUTTONS else (),
        sections=(ListSection("S", options),) if kind is ReplyKind.LIST else (),
    )
    bodies = reply_bodies(reply, PEER)
    assert [b["type"] for b in bodies] == ["text", "text"]
    assert bodies[-1]["text"]["body"].endswith("• Alpha\n• Beta")
