"""Typed schema of the EdgeWisePersona canonical layout (see DATA.md).

Three line-aligned JSONL files: line *i* of `characters.jsonl`, `routines.jsonl` and
`sessions.jsonl` belongs to persona *i*. This module holds the vocabulary of the world
(context fields, devices and their parameters) and the dataclasses every layer passes around.
Reading, writing and validation live in `personal.data.io` and `personal.data.validate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

# --- The world's vocabulary -------------------------------------------------------------

#: Session context fields (`meta`) and their allowed values; triggers use the same fields.
META_FIELDS: dict[str, tuple[str, ...]] = {
    "time_of_day": ("morning", "afternoon", "evening", "night"),
    "day_of_week": ("weekday", "weekend"),
    "sun_phase": ("before_sunrise", "daylight", "after_sunset"),
    "weather": ("sunny", "cloudy", "rainy", "snowy"),
    "outdoor_temp": ("very cold", "cold", "mild", "warm", "hot"),
}


@dataclass(frozen=True)
class IntParam:
    """An integer parameter with an inclusive range."""

    lo: int
    hi: int

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi

    def describe(self) -> str:
        return f"an integer in {self.lo}..{self.hi}"


@dataclass(frozen=True)
class ChoiceParam:
    """A categorical parameter."""

    choices: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


@dataclass(frozen=True)
class BoolParam:
    """A boolean parameter (security `armed`)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


ParamSpec = Union[IntParam, ChoiceParam, BoolParam]

#: Devices and the parameters each one sets (DATA.md).
DEVICES: dict[str, dict[str, ParamSpec]] = {
    "tv": {
        "volume": IntParam(0, 100),
        "brightness": IntParam(0, 100),
        "input_source": ChoiceParam(("HDMI1", "HDMI2", "AV", "Netflix", "YouTube")),
    },
    "ac": {
        "temperature": IntParam(16, 30),
        "mode": ChoiceParam(("cool", "heat", "auto")),
        "fan_speed": IntParam(0, 3),
    },
    "lights": {
        "brightness": IntParam(0, 100),
        "color": ChoiceParam(("warm", "cool", "neutral")),
        "mode": ChoiceParam(("static", "dynamic")),
    },
    "speaker": {
        "volume": IntParam(0, 100),
        "equalizer": ChoiceParam(("bass boost", "balanced", "treble boost")),
    },
    "security": {
        "armed": BoolParam(),
        "alarm_volume": IntParam(0, 100),
    },
}

ROLES = ("user", "assistant")

#: Actions: {device: {parameter: value}} for the devices a turn or routine touches.
#: In files an untouched device may appear as `null`; in memory it is simply absent.
Actions = dict[str, dict[str, Any]]
#: Session context; `None` means unknown (e.g. imported dialogues without meta).
Meta = Optional[dict[str, str]]


# --- Records ------------------------------------------------------------------------------

@dataclass
class Message:
    """One turn of a dialogue. `actions` and `alt_text` are this project's optional
    extensions on assistant turns (gold settings; an independent re-phrasing); `provenance`
    marks a turn made by data augmentation ({method, source_session, source_turn})."""

    role: str
    text: str
    actions: Optional[Actions] = None
    alt_text: Optional[str] = None
    provenance: Optional[dict] = None


@dataclass
class Routine:
    """A routine: when the context matches `triggers`, the user wants `actions`."""

    triggers: dict[str, str]
    actions: Actions


@dataclass
class Session:
    """One dialogue, in the order it happened within its persona."""

    session_id: int
    meta: Meta
    messages: list[Message]
    applied_routines: Optional[list[int]] = None
    session_summarization: Optional[str] = None


@dataclass
class Persona:
    """One user: character sketch, routines and sessions (one line of each file)."""

    persona_id: str
    character: Optional[str]
    routines: list[Routine]
    sessions: list[Session]
    archetype: Optional[str] = None
    """Simulator only: the archetype the persona was drawn from (stored in the object form
    of `characters.jsonl`); None for real data."""
    name: Optional[str] = None
    """Simulator only: the persona's first name (also in the object form of the line)."""


@dataclass
class Dataset:
    """A population of personas, in file order."""

    personas: list[Persona]

    def by_id(self) -> dict[str, Persona]:
        return {p.persona_id: p for p in self.personas}


@dataclass
class Split:
    """Per-persona session indices for train / val / test, in session order.

    `cold_start` personas appear in no training split: their early sessions (in `val`) may
    be used to place them (e.g. nearest cluster), never to train on.
    """

    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)
    test: list[int] = field(default_factory=list)
    cold_start: bool = False


#: persona_id -> Split
Splits = dict[str, Split]


@dataclass
class Example:
    """One assistant turn to predict: the unit of training and of evaluation."""

    persona_id: str
    session_id: int
    turn_index: int  # index of the target message within the session's messages
    meta: Meta
    history: list[Message]  # the messages before the target (last N), oldest first
    target: str
    actions: Optional[Actions] = None  # gold settings of the target turn, if known
    alt_text: Optional[str] = None


def persona_id_for_line(index: int) -> str:
    """Canonical persona id for line `index` (0-based) of the canonical layout."""
    return f"persona_{index:03d}"
