"""Graph bodies: every WhatsApp limit enforced, unicode cut safely, invalid content degraded."""

from __future__ import annotations

import pytest

from pyloto_cli.domain import outbound as ob
from pyloto_cli.domain.errors import PermanentError
from pyloto_cli.domain.reply import ListSection, Reply, ReplyKind, ReplyOption
from pyloto_cli.domain.webhook import Recipient

PHONE = Recipient(to="15550001234")
BSUID = Recipient(recipient="US.13491208655302741918")
WAMID = "wamid.INBOUND1"


def opt(title: str, id_: str | None = None, description: str | None = None) -> ReplyOption:
    return ReplyOption(
        id=id_ if id_ is not None else title.lower(), title=title, description=description
    )


def no_broken_clusters(text: str) -> bool:
    """No lone surrogate, no dangling ZWJ, no modifier or half flag right before the ellipsis."""
    stem = text.removesuffix(ob.ELLIPSIS)
    if not stem:
        return True
    last = stem[-1]
    flags = len(stem) - len(stem.rstrip("".join(chr(c) for c in range(0x1F1E6, 0x1F200))))
    return last != "\u200d" and flags % 2 == 0 and all(not 0xD800 <= ord(c) <= 0xDFFF for c in stem)


class TestLengthCounting:
    def test_bmp_text_counts_code_points(self) -> None:
        """Accented and non-Latin BMP text counts one unit per character."""
        assert ob.wa_len("ação") == 4
        assert ob.wa_len("مرحبا") == 5

    def test_astral_emoji_count_two(self) -> None:
        """An emoji outside the BMP counts 2 (UTF-16), a skin-toned one 4, a flag 4."""
        assert ob.wa_len("👍") == 2
        assert ob.wa_len("👍🏽") == 4
        assert ob.wa_len("🇧🇷") == 4

    def test_shorten_keeps_text_that_fits(self) -> None:
        """Text within the limit is returned unchanged."""
        assert ob.shorten("x" * 20, 20) == "x" * 20

    def test_shorten_adds_ellipsis_within_limit(self) -> None:
        """Over-long text is cut to limit-1 units plus an ellipsis."""
        cut = ob.shorten("abcdefghij" * 3, 20)
        assert cut.endswith(ob.ELLIPSIS)
        assert ob.wa_len(cut) <= 20

    @pytest.mark.parametrize(
        "text",
        [
            "a" * 18 + "👍" * 3,  # a surrogate pair straddles the cut
            "abc" + "👍🏽" * 8,  # emoji + skin tone modifier
            "ab" + "👨\u200d👩\u200d👧\u200d👦" * 3,  # ZWJ family
            "a" + "🇧🇷🇵🇹🇺🇸🇯🇵🇫🇷🇩🇪",  # flags: odd offset
            "cafe\u0301" * 6,  # combining accent
            "1\ufe0f\u20e3" * 10,  # keycaps
        ],
    )
    def test_shorten_never_splits_a_cluster(self, text: str) -> None:
        """Cuts land on grapheme boundaries: no broken emoji, flag or accent."""
        for limit in range(2, 24):
            cut = ob.shorten(text, limit)
            assert ob.wa_len(cut) <= limit
            assert no_broken_clusters(cut), (limit, cut)
            stem = cut.removesuffix(ob.ELLIPSIS)
            assert text.startswith(stem)
            if stem and len(stem) < len(text):
                assert not ob._extends(text[len(stem)]), (limit, cut)


class TestEnvelope:
    def test_phone_recipient_gets_plus(self) -> None:
        """A wa_id without + is sent as E.164 with +, never relying on Meta's country guess."""
        body = ob.text_body(PHONE, "hi")
        assert body["to"] == "+15550001234"
        assert body["messaging_product"] == "whatsapp"
        assert body["recipient_type"] == "individual"
        assert "recipient" not in body

    def test_bsuid_recipient(self) -> None:
        """Without a phone the BSUID goes in `recipient`."""
        body = ob.text_body(BSUID, "hi")
        assert body["recipient"] == "US.13491208655302741918"
        assert "to" not in body

    def test_phone_wins_over_bsuid(self) -> None:
        """When both are known, `to` is used (Meta: `to` wins anyway)."""
        body = ob.text_body(Recipient(to="+15550001234", recipient="US.1"), "hi")
        assert body["to"] == "+15550001234"
        assert "recipient" not in body

    def test_no_recipient_is_permanent(self) -> None:
        """A reply with nowhere to go is a permanent error, not a crash."""
        with pytest.raises(PermanentError):
            ob.text_body(Recipient(), "hi")

    def test_reply_carries_context_and_callback(self) -> None:
        """A reply quotes the inbound wamid and echoes it as biz_opaque_callback_data."""
        body = ob.build_reply_body(Reply(text="ok"), PHONE, reply_to=WAMID)
        assert body["context"] == {"message_id": WAMID}
        assert body["biz_opaque_callback_data"] == WAMID

    def test_callback_without_quote(self) -> None:
        """callback_data alone tags the send without quoting the message."""
        body = ob.build_reply_body(Reply(text="ok"), PHONE, callback_data=WAMID)
        assert "context" not in body
        assert body["biz_opaque_callback_data"] == WAMID


class TestText:
    def test_text_body_shape(self) -> None:
        """A text body has type text and no preview without a link."""
        body = ob.text_body(PHONE, "  hello  ")
        assert body["type"] == "text"
        assert body["text"] == {"preview_url": False, "body": "hello"}

    @pytest.mark.parametrize("link", ["http://example.com", "see HTTPS://example.com/x"])
    def test_preview_when_link(self, link: str) -> None:
        """preview_url is true when an http(s) link is present."""
        assert ob.text_body(PHONE, link)["text"]["preview_url"] is True

    def test_plain_domain_is_not_a_link(self) -> None:
        """A bare domain does not turn previews on (Meta previews http(s) URLs only)."""
        assert ob.text_body(PHONE, "example.com")["text"]["preview_url"] is False

    def test_text_limit_4096(self) -> None:
        """Text over 4096 units is shortened with an ellipsis."""
        body = ob.text_body(PHONE, "é" * 5000)["text"]["body"]
        assert ob.wa_len(body) == 4096
        assert body.endswith(ob.ELLIPSIS)

    def test_text_limit_counts_emoji_as_two(self) -> None:
        """3000 emoji (6000 units) are cut to ≤ 4096 units, whole emoji only."""
        body = ob.text_body(PHONE, "😀" * 3000)["text"]["body"]
        assert ob.wa_len(body) <= 4096
        assert body.removesuffix(ob.ELLIPSIS) == "😀" * 2047

    def test_empty_text_is_permanent(self) -> None:
        """An empty reply is never sent."""
        with pytest.raises(PermanentError):
            ob.text_body(PHONE, "   ")


class TestButtons:
    def reply(self, *buttons: ReplyOption, text: str = "Pick one") -> Reply:
        return Reply(text=text, kind=ReplyKind.BUTTONS, buttons=buttons)

    def test_buttons_shape(self) -> None:
        """Up to 3 reply buttons, each {type: reply, reply: {id, title}}."""
        body = ob.build_reply_body(self.reply(opt("Yes"), opt("No")), PHONE)
        interactive = body["interactive"]
        assert body["type"] == "interactive"
        assert interactive["type"] == "button"
        assert interactive["body"] == {"text": "Pick one"}
        assert interactive["action"]["buttons"] == [
            {"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
            {"type": "reply", "reply": {"id": "no", "title": "No"}},
        ]

    def test_title_limit_20(self) -> None:
        """Titles over 20 units are shortened with an ellipsis."""
        body = ob.build_reply_body(self.reply(opt("A very long button title indeed")), PHONE)
        title = body["interactive"]["action"]["buttons"][0]["reply"]["title"]
        assert ob.wa_len(title) <= 20
        assert title.endswith(ob.ELLIPSIS)

    def test_emoji_title_limit(self) -> None:
        """An emoji title is cut on whole emoji within 20 units."""
        body = ob.build_reply_body(self.reply(opt("👍🏽" * 8, "t")), PHONE)
        title = body["interactive"]["action"]["buttons"][0]["reply"]["title"]
        assert ob.wa_len(title) <= 20
        assert title == "👍🏽" * 4 + ob.ELLIPSIS

    def test_duplicate_titles_are_dropped(self) -> None:
        """A title repeated word for word (any case) is dropped."""
        body = ob.build_reply_body(self.reply(opt("Yes", "a"), opt("yes", "b"), opt("No")), PHONE)
        titles = [b["reply"]["title"] for b in body["interactive"]["action"]["buttons"]]
        assert titles == ["Yes", "No"]

    def test_titles_that_shorten_alike_are_made_unique(self) -> None:
        """Distinct long titles with the same 20-unit prefix get distinct titles."""
        first, second = opt("Option number one, red", "1"), opt("Option number one, blue", "2")
        body = ob.build_reply_body(self.reply(first, second), PHONE)
        titles = [b["reply"]["title"] for b in body["interactive"]["action"]["buttons"]]
        assert len(set(titles)) == 2
        assert all(ob.wa_len(t) <= 20 for t in titles)

    def test_id_limit_256_and_unique(self) -> None:
        """Ids over 256 are cut (keeping a hash), duplicates and blanks get distinct ids."""
        long_id = "x" * 300
        body = ob.build_reply_body(
            self.reply(opt("A", long_id), opt("B", long_id), opt("C", "  ")), PHONE
        )
        ids = [b["reply"]["id"] for b in body["interactive"]["action"]["buttons"]]
        assert all(len(i) <= 256 for i in ids)
        assert len(set(ids)) == 3
        assert ids[2] == "option_3"

    def test_body_over_1024_falls_back_to_text(self) -> None:
        """A buttons body over 1024 units becomes a text message listing the options."""
        body = ob.build_reply_body(self.reply(opt("Yes"), opt("No"), text="q" * 1025), PHONE)
        assert body["type"] == "text"
        assert body["text"]["body"].endswith("• Yes\n• No")

    def test_body_1024_stays_buttons(self) -> None:
        """Exactly 1024 units is still a buttons message."""
        body = ob.build_reply_body(self.reply(opt("Yes"), text="q" * 1024), PHONE)
        assert body["type"] == "interactive"

    def test_more_than_three_buttons_become_a_list(self) -> None:
        """4-10 options are sent as a list instead of dropping any."""
        buttons = [opt(f"Choice {n}") for n in range(5)]
        body = ob.build_reply_body(self.reply(*buttons), PHONE)
        assert body["interactive"]["type"] == "list"
        rows = body["interactive"]["action"]["sections"][0]["rows"]
        assert [r["title"] for r in rows] == [f"Choice {n}" for n in range(5)]

    def test_more_than_ten_buttons_become_text(self) -> None:
        """More options than any interactive type carries become a text message."""
        buttons = [opt(f"Choice {n}") for n in range(11)]
        body = ob.build_reply_body(self.reply(*buttons), PHONE)
        assert body["type"] == "text"
        assert "• Choice 10" in body["text"]["body"]

    def test_blank_titles_only_becomes_text(self) -> None:
        """Buttons without any usable title become plain text."""
        body = ob.build_reply_body(self.reply(opt("  ", "a")), PHONE)
        assert body == ob.text_body(PHONE, "Pick one")

    def test_header_and_footer_limits(self) -> None:
        """Header and footer are cut to 60 units."""
        body = ob.buttons_body(PHONE, "Body", [opt("Yes")], header="h" * 80, footer="f" * 80)
        assert ob.wa_len(body["interactive"]["header"]["text"]) == 60
        assert ob.wa_len(body["interactive"]["footer"]["text"]) == 60


class TestList:
    def reply(self, *sections: ListSection, button: str = "Options", text: str = "Choose") -> Reply:
        return Reply(text=text, kind=ReplyKind.LIST, sections=sections, list_button=button)

    def test_list_shape(self) -> None:
        """A list has a button label, titled sections and rows with optional descriptions."""
        section = ListSection("Fruit", (opt("Apple", "a", "Red"), opt("Pear", "p")))
        body = ob.build_reply_body(self.reply(section, button="See"), PHONE, reply_to=WAMID)
        interactive = body["interactive"]
        assert interactive["type"] == "list"
        assert interactive["body"] == {"text": "Choose"}
        assert interactive["action"] == {
            "button": "See",
            "sections": [
                {
                    "title": "Fruit",
                    "rows": [
                        {"id": "a", "title": "Apple", "description": "Red"},
                        {"id": "p", "title": "Pear"},
                    ],
                }
            ],
        }
        assert body["context"] == {"message_id": WAMID}

    def test_field_limits(self) -> None:
        """Button 20, section and row titles 24, description 72, row id 200."""
        row = opt("r" * 30, "i" * 250, "d" * 100)
        body = ob.build_reply_body(
            self.reply(ListSection("s" * 30, (row,)), button="b" * 30), PHONE
        )
        action = body["interactive"]["action"]
        section = action["sections"][0]
        assert ob.wa_len(action["button"]) == 20
        assert ob.wa_len(section["title"]) == 24
        assert ob.wa_len(section["rows"][0]["title"]) == 24
        assert ob.wa_len(section["rows"][0]["description"]) == 72
        assert len(section["rows"][0]["id"]) <= 200

    def test_ten_rows_across_sections_is_a_list(self) -> None:
        """10 rows in total (over several sections) is the maximum list."""
        sections = [
            ListSection(f"S{s}", tuple(opt(f"R{s}{r}") for r in range(5))) for s in range(2)
        ]
        body = ob.build_reply_body(self.reply(*sections), PHONE)
        assert body["type"] == "interactive"

    def test_eleven_rows_fall_back_to_text(self) -> None:
        """More than 10 rows in total becomes a text message with every option."""
        sections = [ListSection("A", tuple(opt(f"R{r}") for r in range(6)))] * 2
        body = ob.build_reply_body(self.reply(*sections), PHONE)
        assert body["type"] == "text"
        assert body["text"]["body"].count("• ") == 12

    def test_empty_list_falls_back_to_text(self) -> None:
        """A list without sections or rows becomes plain text."""
        body = ob.build_reply_body(self.reply(ListSection("Empty", ())), PHONE)
        assert body == ob.text_body(PHONE, "Choose")

    def test_duplicate_row_ids_made_unique(self) -> None:
        """Row ids are unique across sections."""
        sections = [ListSection("A", (opt("One", "x"),)), ListSection("B", (opt("Two", "x"),))]
        body = ob.build_reply_body(self.reply(*sections), PHONE)
        rows = [r for s in body["interactive"]["action"]["sections"] for r in s["rows"]]
        assert len({r["id"] for r in rows}) == 2

    def test_body_over_4096_falls_back_to_text(self) -> None:
        """A list body over 4096 units is not cut: the reply falls back to text (which the
        long-reply split then carries whole)."""
        body = ob.build_reply_body(
            self.reply(ListSection("A", (opt("x"),)), text="b" * 5000), PHONE
        )
        assert body["type"] == "text"
        fits = ob.build_reply_body(
            self.reply(ListSection("A", (opt("x"),)), text="b" * 4096), PHONE
        )
        assert fits["type"] == "interactive"

    def test_untitled_section_gets_a_title(self) -> None:
        """A section without a title gets one (required once there are several)."""
        sections = [ListSection("", (opt("One"),)), ListSection(" ", (opt("Two"),))]
        body = ob.build_reply_body(self.reply(*sections), PHONE)
        assert all(s["title"] for s in body["interactive"]["action"]["sections"])


class TestOtherBodies:
    def test_reaction(self) -> None:
        """A reaction names the message and the emoji, without context."""
        body = ob.reaction_body(PHONE, WAMID, "👍")
        assert body["type"] == "reaction"
        assert body["reaction"] == {"message_id": WAMID, "emoji": "👍"}
        assert "context" not in body

    def test_template(self) -> None:
        """A template has a name, a language code and its components."""
        components = [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]
        body = ob.template_body(BSUID, "order_update", "pt_BR", components, callback_data=WAMID)
        assert body["template"] == {
            "name": "order_update",
            "language": {"code": "pt_BR"},
            "components": components,
        }
        assert body["recipient"] == BSUID.recipient
        assert body["biz_opaque_callback_data"] == WAMID

    def test_mark_read(self) -> None:
        """Mark-as-read is status read plus the message id."""
        assert ob.mark_read_body(WAMID) == {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": WAMID,
        }

    def test_typing_indicator(self) -> None:
        """The typing indicator rides on mark-as-read."""
        body = ob.typing_indicator_body(WAMID)
        assert body["status"] == "read"
        assert body["typing_indicator"] == {"type": "text"}

    def test_over_long_callback_data_is_omitted(self) -> None:
        """biz_opaque_callback_data over 512 units is left out rather than sent invalid."""
        body = ob.text_body(PHONE, "hi", callback_data="c" * 513)
        assert "biz_opaque_callback_data" not in body
