"""What the stages ask the model and what they accept back: the prompts, the JSON schemas of
the structured stages and the validation of their answers.

The schemas are sent as `response_format` (strict JSON schema); the answers are validated here
with pydantic, whatever the model sent. An answer that does not match raises `LLMCallError`
with reason `bad_output`, and the stage falls back. Option ids are made here (`btn-1`,
`row-1`, ...); titles are kept raw, the payload builder enforces WhatsApp's lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pyloto_cli.domain.llm import LLMCallError
from pyloto_cli.domain.reply import ListSection, ReplyKind, ReplyOption

EVENTS: Final = (
    "greeting",
    "question",
    "price",
    "complaint",
    "cancel",
    "human_handoff",
    "opt_out",
    "other",
)


@dataclass(frozen=True, slots=True)
class Prompts:
    """The system prompts of the three stages."""

    event: str
    response: str
    message_type: str


def load_prompts(prompts_dir: Path | None = None) -> Prompts:
    """The shipped prompts, each replaced by `<prompts_dir>/<stage>.txt` when that file exists."""
    if prompts_dir is not None and not prompts_dir.is_dir():
        raise ValueError(f"PYLOTO_PROMPTS_DIR is not a directory: {prompts_dir}")

    def read(name: str) -> str:
        if prompts_dir is not None and (prompts_dir / f"{name}.txt").is_file():
            return (prompts_dir / f"{name}.txt").read_text(encoding="utf-8").strip()
        shipped = resources.files("pyloto_cli").joinpath("prompts", f"{name}.txt")
        return shipped.read_text(encoding="utf-8").strip()

    return Prompts(
        event=read("event"), response=read("response"), message_type=read("message_type")
    )


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_STR: Final = {"type": "string"}
EVENT_SCHEMA: Final = _object({"event": {"type": "string", "enum": list(EVENTS)}})
MESSAGE_TYPE_SCHEMA: Final = _object(
    {
        "kind": {"type": "string", "enum": [k.value for k in ReplyKind]},
        "buttons": {"type": "array", "maxItems": 3, "items": _object({"title": _STR})},
        "list_button": _STR,
        "sections": {
            "type": "array",
            "items": _object(
                {
                    "title": _STR,
                    "rows": {
                        "type": "array",
                        "items": _object({"title": _STR, "description": _STR}),
                    },
                }
            ),
        },
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class _EventOut(_Strict):
    event: str

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str) -> str:
        if value not in EVENTS:
            raise ValueError(f"unknown event {value!r}")
        return value


class _ButtonOut(_Strict):
    title: str = Field(min_length=1)


class _RowOut(_Strict):
    title: str = Field(min_length=1)
    description: str | None = None


class _SectionOut(_Strict):
    title: str = ""
    rows: list[_RowOut] = Field(min_length=1)


class _MessageTypeOut(_Strict):
    kind: ReplyKind
    buttons: list[_ButtonOut] = Field(default_factory=list, max_length=3)
    list_button: str = ""
    sections: list[_SectionOut] = Field(default_factory=list)

    @model_validator(mode="after")
    def _options_match_kind(self) -> _MessageTypeOut:
        if self.kind is ReplyKind.BUTTONS and not self.buttons:
            raise ValueError("kind 'buttons' needs at least one button")
        if self.kind is ReplyKind.LIST and not self.sections:
            raise ValueError("kind 'list' needs at least one section")
        return self


@dataclass(frozen=True, slots=True)
class MessageShape:
    """LLM#3's decision: how the reply text goes out, with its raw options."""

    kind: ReplyKind = ReplyKind.TEXT
    buttons: tuple[ReplyOption, ...] = ()
    sections: tuple[ListSection, ...] = ()
    list_button: str = "Options"


TEXT_SHAPE: Final = MessageShape()


def parse_event(content: str) -> str:
    """LLM#1's event from its JSON answer; raises LLMCallError(`bad_output`)."""
    try:
        return _EventOut.model_validate_json(content).event
    except ValidationError as exc:
        raise LLMCallError("bad_output", service=False) from exc


def parse_message_type(content: str) -> MessageShape:
    """LLM#3's shape from its JSON answer; raises LLMCallError(`bad_output`)."""
    try:
        out = _MessageTypeOut.model_validate_json(content)
    except ValidationError as exc:
        raise LLMCallError("bad_output", service=False) from exc
    if out.kind is ReplyKind.BUTTONS:
        buttons = tuple(ReplyOption(f"btn-{i}", b.title) for i, b in enumerate(out.buttons, 1))
        return MessageShape(kind=ReplyKind.BUTTONS, buttons=buttons)
    if out.kind is ReplyKind.LIST:
        return MessageShape(
            kind=ReplyKind.LIST,
            sections=_sections(out.sections),
            list_button=out.list_button or TEXT_SHAPE.list_button,
        )
    return TEXT_SHAPE


def _sections(sections: list[_SectionOut]) -> tuple[ListSection, ...]:
    result: list[ListSection] = []
    count = 0
    for section in sections:
        rows: list[ReplyOption] = []
        for row in section.rows:
            count += 1
            rows.append(ReplyOption(f"row-{count}", row.title, row.description or None))
        result.append(ListSection(title=section.title, rows=tuple(rows)))
    return tuple(result)
