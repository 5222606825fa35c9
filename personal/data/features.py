"""User features computed from training data only, for clustering and the selective
meta-classifier.

A persona's *training sessions* are its `train` sessions, or its `val` sessions when it is a
cold-start persona (it has no train; its early sessions may place it, never train a model).
Test sessions never enter a feature.

Features (one row per persona, columns in `feature_names()` order):
- interaction count: training sessions, assistant turns, assistant turns per session;
- verbosity: mean words per user turn and per assistant turn;
- formality proxies: markers per user turn from `FORMAL_MARKERS` and `CASUAL_MARKERS`;
- sentiment proxies: `POSITIVE_WORDS` / `NEGATIVE_WORDS` per user turn, and positive words
  per assistant turn (the assistant's warmth towards this user);
- assistant style: share of assistant turns with a question, with a number, with the
  persona's name (0 when the name is unknown);
- device usage: share of assistant turns that touch each device;
- parameter values: mean of each integer parameter, and the share of each choice of each
  categorical parameter (share armed for `security.armed`), over the turns that set it;
- routines: number of routines, share of training sessions with `applied_routines`
  (over sessions where it is known), context distribution (share of training sessions per
  value of each `meta` field, over sessions with known meta), share of sessions with meta.

Devices and parameters of a turn come from its gold `actions` when present; otherwise from
the user message right before it by the keyword rules of `actions_from_text` (rough: it
finds device words, numbers next to a parameter word, and choice words near their device).

A value that is undefined for a persona (a parameter it never set, a context it never had)
is filled with the mean of that column over the personas that have it, or 0 if none does,
so the matrix is complete and the fill moves no persona towards any other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from personal.data.schema import (DEVICES, META_FIELDS, Actions, BoolParam, ChoiceParam, Dataset,
                                  IntParam, Message, Persona, Session, Splits)
from personal.data.splits import check_splits, training_sessions

# --- Word lists (proxies, deliberately small and documented) ------------------------------

#: Polite / formal phrasing.
FORMAL_MARKERS = ("please", "thank you", "thanks", "could you", "would you", "kindly",
                  "would you mind", "i would like", "appreciate", "may i")
#: Casual phrasing.
CASUAL_MARKERS = ("gonna", "wanna", "gotta", "hey", "yeah", "yep", "yo", "ok", "okay", "kinda",
                  "lol", "pls", "thx", "cuz", "crank", "chill")
#: Positive sentiment.
POSITIVE_WORDS = ("great", "love", "lovely", "nice", "perfect", "wonderful", "awesome", "happy",
                  "enjoy", "glad", "good", "cozy", "cosy", "relax", "relaxing", "pleasant",
                  "fantastic", "delightful")
#: Negative sentiment.
NEGATIVE_WORDS = ("bad", "hate", "annoying", "annoyed", "ugh", "terrible", "awful", "tired",
                  "sad", "stressful", "stressed", "horrible", "miserable", "exhausted", "worst",
                  "uncomfortable")

#: Words that show a device is meant (matched as whole words, lower case).
DEVICE_WORDS: dict[str, tuple[str, ...]] = {
    "tv": ("tv", "television", "telly", "netflix", "youtube", "hdmi", "hdmi1", "hdmi2"),
    "ac": ("ac", "a/c", "air conditioning", "air conditioner", "thermostat", "temperature",
           "degrees", "heating", "cooling", "fan"),
    "lights": ("light", "lights", "lamp", "lamps", "lighting"),
    "speaker": ("speaker", "speakers", "music", "equalizer", "playlist", "bass", "treble"),
    "security": ("security", "alarm", "arm", "armed", "disarm", "disarmed"),
}


def _phrase_regex(phrases: Iterable[str]) -> re.Pattern:
    alts = sorted(phrases, key=len, reverse=True)  # longest first so phrases win over words
    return re.compile(r"(?<![\w/])(?:" + "|".join(re.escape(p) for p in alts) + r")(?![\w/])")


_FORMAL = _phrase_regex(FORMAL_MARKERS)
_CASUAL = _phrase_regex(CASUAL_MARKERS)
_POSITIVE = _phrase_regex(POSITIVE_WORDS)
_NEGATIVE = _phrase_regex(NEGATIVE_WORDS)
_DEVICE = {d: _phrase_regex(ws) for d, ws in DEVICE_WORDS.items()}
_NUMBER = re.compile(r"\d")


# --- Text helpers (shared with stats) -----------------------------------------------------

def word_count(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def count_markers(pattern: re.Pattern, text: str) -> int:
    return len(pattern.findall(text.lower()))


def has_question(text: str) -> bool:
    return "?" in text


def has_number(text: str) -> bool:
    return bool(_NUMBER.search(text))


def mentions_name(text: str, name: Optional[str]) -> bool:
    """True when `name` occurs as a whole word (case-insensitive); False if name unknown."""
    if not name:
        return False
    return re.search(r"(?<!\w)" + re.escape(name.lower()) + r"(?!\w)", text.lower()) is not None


def devices_mentioned(text: str) -> set[str]:
    """Devices whose words occur in `text`."""
    low = text.lower()
    return {d for d, pat in _DEVICE.items() if pat.search(low)}


# --- Keyword extraction of settings from text ---------------------------------------------

_TEMP = re.compile(r"(\d{2})\s*(?:°|degrees)|temperature\D{0,20}?(\d{2})")
_FAN = re.compile(r"fan(?: speed)?\D{0,12}?(\d)\b")
_VOLUME = re.compile(r"volume\D{0,15}?(\d{1,3})\b|(\d{1,3})\s*%?\s*volume")
_BRIGHT = re.compile(r"brightness\D{0,15}?(\d{1,3})\b|(\d{1,3})\s*%?\s*brightness")
#: "lights at 60", "dim the lamp to 40%": a bare number next to a light word is a brightness.
_LIGHT_LEVEL = re.compile(r"\b(?:light|lights|lamp|lamps|lighting)\b\D{0,15}?(\d{1,3})\b")
_COLOR = re.compile(r"\b(warm|cool|neutral)\b(?:\W+\w+){0,2}?\W+(?:light|lights|lighting|colou?r|tone|white)\b"
                    r"|colou?r\W+(?:\w+\W+){0,3}?(warm|cool|neutral)\b")
_AC_MODE = re.compile(r"\b(cool|heat|auto)\s+mode\b|mode\W+(?:\w+\W+){0,2}?(cool|heat|auto)\b")


def _first_int(pattern: re.Pattern, text: str) -> Optional[int]:
    m = pattern.search(text)
    if not m:
        return None
    return int(next(g for g in m.groups() if g is not None))


def _set(out: Actions, device: str, param: str, value) -> None:
    if value is not None and DEVICES[device][param].accepts(value):
        out.setdefault(device, {})[param] = value


def _only(candidates: set[str], mentioned: set[str]) -> Optional[str]:
    hit = candidates & mentioned
    return next(iter(hit)) if len(hit) == 1 else None


def _numeric_from_text(low: str, mentioned: set[str], out: Actions) -> None:
    if "ac" in mentioned:
        _set(out, "ac", "temperature", _first_int(_TEMP, low))
        _set(out, "ac", "fan_speed", _first_int(_FAN, low))
    volume_owner = _only({"tv", "speaker", "security"}, mentioned)
    if volume_owner:
        param = "alarm_volume" if volume_owner == "security" else "volume"
        _set(out, volume_owner, param, _first_int(_VOLUME, low))
    bright_owner = _only({"tv", "lights"}, mentioned)
    if bright_owner:
        level = _first_int(_BRIGHT, low)
        if level is None and bright_owner == "lights":
            level = _first_int(_LIGHT_LEVEL, low)
        _set(out, bright_owner, "brightness", level)


def _choices_from_text(low: str, mentioned: set[str], out: Actions) -> None:
    if "tv" in mentioned:
        for src in ("HDMI1", "HDMI2", "Netflix", "YouTube", "AV"):
            if re.search(r"\b" + src.lower() + r"\b", low):
                _set(out, "tv", "input_source", src)
                break
    if "ac" in mentioned and (m := _AC_MODE.search(low)):
        _set(out, "ac", "mode", m.group(1) or m.group(2))
    if "lights" in mentioned:
        if m := _COLOR.search(low):
            _set(out, "lights", "color", m.group(1) or m.group(2))
        for mode in ("dynamic", "static"):
            if re.search(r"\b" + mode + r"\b", low):
                _set(out, "lights", "mode", mode)
    if "speaker" in mentioned:
        for eq in ("bass boost", "balanced", "treble boost"):
            if eq in low:
                _set(out, "speaker", "equalizer", eq)
                break
    if "security" in mentioned:
        armed = None if not re.search(r"\b(?:arm|armed|disarm|disarmed)\b", low) else \
            not re.search(r"\bdisarm", low)
        _set(out, "security", "armed", armed)


def actions_from_text(text: str) -> Actions:
    """Rough settings a text asks for: every mentioned device (possibly with no parameters)
    plus the parameter values the keyword rules find. Used only when gold is missing."""
    low = text.lower()
    mentioned = devices_mentioned(low)
    out: Actions = {d: {} for d in sorted(mentioned)}
    _numeric_from_text(low, mentioned, out)
    _choices_from_text(low, mentioned, out)
    return out


def turn_actions(session: Session) -> list[tuple[Message, Actions]]:
    """Each assistant message of `session` with its settings: gold `actions` when present,
    else `actions_from_text` of the user message right before it."""
    out = []
    for t, msg in enumerate(session.messages):
        if msg.role != "assistant":
            continue
        if msg.actions is not None:
            out.append((msg, msg.actions))
        else:
            prev = session.messages[t - 1].text if t > 0 and session.messages[t - 1].role == "user" else ""
            out.append((msg, actions_from_text(prev)))
    return out


# --- Feature names --------------------------------------------------------------------

_STYLE = ["sessions", "assistant_turns", "assistant_turns_per_session", "user_words",
          "assistant_words", "user_formal_per_turn", "user_casual_per_turn",
          "user_positive_per_turn", "user_negative_per_turn", "assistant_positive_per_turn",
          "assistant_question_rate", "assistant_number_rate", "assistant_name_rate"]


def _param_names() -> list[str]:
    names = []
    for dev, params in DEVICES.items():
        for param, spec in params.items():
            if isinstance(spec, IntParam):
                names.append(f"{dev}.{param}.mean")
            elif isinstance(spec, ChoiceParam):
                names.extend(f"{dev}.{param}={c}" for c in spec.choices)
            elif isinstance(spec, BoolParam):
                names.append(f"{dev}.{param}=true")
    return names


def feature_names() -> list[str]:
    """Column names of the feature matrix, in order."""
    return (_STYLE + [f"device.{d}" for d in DEVICES] + _param_names()
            + ["routines", "routine_session_share", "meta_known_share"]
            + [f"context.{f}={v}" for f, vals in META_FIELDS.items() for v in vals])


# --- Per-persona features -------------------------------------------------------------

def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _style_features(persona: Persona, sessions: list[Session]) -> dict[str, float]:
    user = [m.text for s in sessions for m in s.messages if m.role == "user"]
    asst = [m.text for s in sessions for m in s.messages if m.role == "assistant"]
    return {
        "sessions": float(len(sessions)),
        "assistant_turns": float(len(asst)),
        "assistant_turns_per_session": len(asst) / len(sessions) if sessions else float("nan"),
        "user_words": _mean([word_count(t) for t in user]),
        "assistant_words": _mean([word_count(t) for t in asst]),
        "user_formal_per_turn": _mean([count_markers(_FORMAL, t) for t in user]),
        "user_casual_per_turn": _mean([count_markers(_CASUAL, t) for t in user]),
        "user_positive_per_turn": _mean([count_markers(_POSITIVE, t) for t in user]),
        "user_negative_per_turn": _mean([count_markers(_NEGATIVE, t) for t in user]),
        "assistant_positive_per_turn": _mean([count_markers(_POSITIVE, t) for t in asst]),
        "assistant_question_rate": _mean([has_question(t) for t in asst]),
        "assistant_number_rate": _mean([has_number(t) for t in asst]),
        "assistant_name_rate": _mean([mentions_name(t, persona.name) for t in asst]),
    }


def _device_features(sessions: list[Session]) -> dict[str, float]:
    turns = [acts for s in sessions for _, acts in turn_actions(s)]
    out = {f"device.{d}": _mean([d in acts for acts in turns]) for d in DEVICES}
    for dev, params in DEVICES.items():
        for param, spec in params.items():
            values = [acts[dev][param] for acts in turns if param in (acts.get(dev) or {})]
            if isinstance(spec, IntParam):
                out[f"{dev}.{param}.mean"] = _mean(values)
            elif isinstance(spec, ChoiceParam):
                out.update({f"{dev}.{param}={c}": _mean([v == c for v in values]) for c in spec.choices})
            else:
                out[f"{dev}.{param}=true"] = _mean([v is True for v in values])
    return out


def _routine_features(persona: Persona, sessions: list[Session]) -> dict[str, float]:
    known_routines = [s for s in sessions if s.applied_routines is not None]
    with_meta = [s for s in sessions if s.meta is not None]
    out = {
        "routines": float(len(persona.routines)),
        "routine_session_share": _mean([bool(s.applied_routines) for s in known_routines]),
        "meta_known_share": _mean([s.meta is not None for s in sessions]),
    }
    for f, vals in META_FIELDS.items():
        for v in vals:
            out[f"context.{f}={v}"] = _mean([s.meta.get(f) == v for s in with_meta])
    return out


def persona_features(persona: Persona, sessions: list[Session]) -> dict[str, float]:
    """Raw features of `persona` from `sessions` (NaN where undefined)."""
    return {**_style_features(persona, sessions), **_device_features(sessions),
            **_routine_features(persona, sessions)}


# --- The matrix -----------------------------------------------------------------------

@dataclass
class UserFeatures:
    """One feature row per persona (training data only); columns named by `names`."""

    persona_ids: list[str]
    matrix: np.ndarray  # [users, F], float64, no NaN
    names: list[str]

    def row(self, persona_id: str) -> np.ndarray:
        return self.matrix[self.persona_ids.index(persona_id)]

    def column(self, name: str) -> np.ndarray:
        return self.matrix[:, self.names.index(name)]


def fill_undefined(matrix: np.ndarray) -> np.ndarray:
    """NaN → the column's mean over defined entries (0 where a column has none)."""
    out = matrix.copy()
    for j in range(out.shape[1]):
        col = out[:, j]
        nan = np.isnan(col)
        if nan.any():
            col[nan] = 0.0 if nan.all() else float(np.mean(col[~nan]))
    return out


def user_features(ds: Dataset, splits: Splits) -> UserFeatures:
    """Feature matrix of every persona in `splits` (dataset order), from its training
    sessions only (train, or val for cold-start personas). See the module docstring."""
    check_splits(ds, splits)
    names = feature_names()
    ids, rows = [], []
    for p in ds.personas:
        if p.persona_id not in splits:
            continue
        sessions = [p.sessions[i] for i in training_sessions(splits[p.persona_id])]
        feats = persona_features(p, sessions)
        ids.append(p.persona_id)
        rows.append([feats[n] for n in names])
    matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    return UserFeatures(persona_ids=ids, matrix=fill_undefined(matrix), names=names)


def standardize(matrix: np.ndarray) -> np.ndarray:
    """Columns scaled to mean 0, standard deviation 1; constant columns become 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    std = matrix.std(axis=0)
    return (matrix - matrix.mean(axis=0)) / np.where(std > 0, std, 1.0)
