"""Dialogue plans of the user simulator: what happens in a session, turn by turn.

A session is planned as a list of steps (one user act, one assistant act) before any text
is written, so an assistant question can be chosen to fit what the user does next (an
offer of the device the user then accepts), and so `alt_text` re-words the very same act.
`synth_render` turns the acts into text.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Optional

from personal.data.schema import DEVICES, Actions, IntParam, Message, Routine, Session
from personal.data.synth_phrases import PARAM_OFFER_WHAT
from personal.data.synth_render import Scene, decide_remarks, render_assistant, render_user, cue_draw, reply_cue
from personal.data.synth_users import (Profile, matches, pick_device, sample_context,
                                       spontaneous_settings)

#: Assistant turns per session (2–7; real sessions have about 4–14 messages), for a user of
#: average verbosity; talkative users have longer dialogues (`turn_weights`).
TURN_WEIGHTS = {2: 0.2, 3: 0.3, 4: 0.24, 5: 0.13, 6: 0.08, 7: 0.05}
#: The population's mean verbosity: users above it talk longer, users below it shorter.
MEAN_VERBOSITY = 0.47
#: Chance that an assistant question about *another* device (whose answer only the user's own
#: routine can tell) is asked where a generic one would be: kept low because real replies
#: follow from the request (issue 18's reply baseline), so most questions are about the
#: request itself (another parameter of the same device) or generic.
CROSS_OFFER = 0.1
#: Share of the questions ending a turn (another setting of the same device / anything else?
#: / is that right? / none) decided by the kind of request answered rather than by the
#: user's habit, and how often that decision asks.
QUESTION_CUE = 0.95
QUESTION_RATE = 0.75
#: Share of request kinds after which the assistant offers another setting of the same
#: device ("Would you like me to adjust the brightness as well?") while one is left.
OFFER_RATE = 0.4
#: Devices asked for late in a routine-driven session (real dialogues rarely reach the
#: speaker or the security system within their first five messages).
LATE_DEVICES = {"tv": -0.8, "speaker": 1.5, "security": 4.0}
#: Chance that a device with both levels and choices is done in two turns (choices, then
#: levels, or the other way round) rather than in one.
SPLIT_SHARE = 0.7
#: Step of an adjustment ("a bit warmer") per integer parameter: (smallest, largest).
ADJUST_STEP = {"temperature": (1, 2), "fan_speed": (1, 1), "brightness": (10, 20), "volume": (5, 15),
               "alarm_volume": (10, 20)}


#: An assistant question: (kind, device, parameter) — kind offer (another device), offer_param
#: (another parameter of a device already set), check, more, clarify or usual; device and
#: parameter are "" where they do not apply.
Question = tuple[str, str, str]


@dataclass
class UserAct:
    """What the user does: open | request | accept | answer | adjust | thanks | decline."""

    kind: str
    settings: Actions = field(default_factory=dict)
    how: str = "exact"  # exact values | "wish" (no values) | "usual" (as always) | "relative"
    direction: int = 0  # adjust: +1 up, -1 down


@dataclass
class AssistantAct:
    """What the assistant does: confirm (applies `settings`) | clarify | close."""

    kind: str
    settings: Actions = field(default_factory=dict)
    from_history: bool = False  # values came from the user's history, not the request
    question: Optional[Question] = None
    direction: int = 0
    after_decline: bool = False


@dataclass
class Step:
    user: UserAct
    assistant: AssistantAct


# --- What the user will ask for -----------------------------------------------------------------

def routine_chunks(rng: random.Random, routine: Routine) -> list[Actions]:
    """The routine's settings in the order the user will ask for them, one or two devices
    at a time; sometimes a device or a parameter is left out (users ask for *some* of it)."""
    devices = list(routine.actions)
    rng.shuffle(devices)
    devices.sort(key=lambda d: LATE_DEVICES.get(d, 0.0) + rng.random())
    if len(devices) > 1 and rng.random() < 0.2:
        devices.pop()
    chunks: list[Actions] = []
    for dev in devices:
        params = dict(routine.actions[dev])
        droppable = [k for k in params if k != "armed"]
        if len(params) > 1 and droppable and rng.random() < 0.15:
            del params[rng.choice(droppable)]
        parts = _split_params(rng, dev, params)
        if chunks and len(chunks[-1]) == 1 and len(parts) == 1 and rng.random() < 0.4:
            chunks[-1][dev] = params  # two devices in one request
        else:
            chunks.extend({dev: part} for part in parts)
    return chunks


def _split_params(rng: random.Random, dev: str, params: dict) -> list[dict]:
    """Sometimes a device is done in two turns: its choices first ("I've switched the TV to
    Netflix. Would you like me to adjust the volume as well?"), then its levels, or the
    other way round."""
    numeric = {k: v for k, v in params.items() if isinstance(DEVICES[dev][k], IntParam)}
    choice = {k: v for k, v in params.items() if k not in numeric}
    if dev == "security" or not numeric or not choice or rng.random() >= SPLIT_SHARE:
        return [params]
    return [choice, numeric] if rng.random() < 0.7 else [numeric, choice]


def spontaneous_chunks(rng: random.Random, p: Profile, meta: dict[str, str]) -> list[Actions]:
    """One or two devices the user wants outside any routine."""
    first = pick_device(rng, p, set())
    chunks = [{first: spontaneous_settings(rng, p, first, meta)}]
    if rng.random() < 0.4:
        second = pick_device(rng, p, {first})
        chunks.append({second: spontaneous_settings(rng, p, second, meta)})
    return chunks


def adjustment(rng: random.Random, touched: Actions) -> Optional[tuple[Actions, int]]:
    """A change of one integer setting made earlier in the session ("a bit warmer")."""
    options = [(d, k) for d, params in touched.items() for k in params if isinstance(DEVICES[d][k], IntParam)]
    if not options:
        return None
    dev, param = rng.choice(options)
    spec, old = DEVICES[dev][param], touched[dev][param]
    direction = rng.choice((1, -1))
    delta = rng.randint(*ADJUST_STEP[param])
    if param in ("brightness", "volume", "alarm_volume"):
        delta = 5 * round(delta / 5)
    if not spec.lo <= old + direction * delta <= spec.hi:  # type: ignore[union-attr]
        direction = -direction
    new = min(spec.hi, max(spec.lo, old + direction * delta))  # type: ignore[union-attr]
    return ({dev: {param: new}}, direction) if new != old else None


# --- Planning ---------------------------------------------------------------------------------

def _merge(touched: Actions, settings: Actions) -> None:
    for dev, params in settings.items():
        touched.setdefault(dev, {}).update(params)


def _opening(rng: random.Random, p: Profile, chunk: Actions, routine: bool, turns: int) -> list[Step]:
    """The first request and the assistant's answer (with a clarifying question first when
    the user only stated a wish and this user's assistant tends to ask back)."""
    r = rng.random()
    how = "exact" if r < p.style.exact_rate else "usual" if routine and r > 0.85 else "wish"
    if how != "exact" and turns >= 3 and rng.random() < p.style.clarify_rate:
        asks_usual = routine and rng.random() < 0.5
        question = ("usual", "", "") if asks_usual else ("clarify", next(iter(chunk)), "")
        answer = "usual" if asks_usual else "exact"
        return [Step(UserAct("open", chunk, how), AssistantAct("clarify", question=question)),
                Step(UserAct("answer", chunk, answer), AssistantAct("confirm", chunk, answer == "usual"))]
    return [Step(UserAct("open", chunk, how), AssistantAct("confirm", chunk, how != "exact"))]


def _unset_param(prev: AssistantAct, touched: Actions, h: float) -> Optional[Question]:
    """("offer_param", device, parameter) for a parameter of `prev`'s first device not set yet
    this session (which one fixed by `h`), or None when every one is set."""
    if not prev.settings:
        return None
    dev = next(iter(prev.settings))
    free = [k for k in DEVICES[dev] if (dev, k) in PARAM_OFFER_WHAT and k not in touched.get(dev, {})
            and k not in prev.settings[dev]]
    return ("offer_param", dev, free[int(h * 1000) % len(free)]) if free else None


def _ending_question(rng: random.Random, p: Profile, prev: AssistantAct, touched: Actions,
                      avoid: Optional[set[str]] = None) -> Optional[Question]:
    """The question that ends `prev`: another setting of the same device, anything else?,
    is that right?, none, or (when `avoid` names the devices already in play, rarely) an
    offer of another device.

    Mostly (`QUESTION_CUE`) whether and what the assistant asks follows from the request it
    answers, the same for every user; otherwise from this user's habits."""
    if rng.random() < QUESTION_CUE:
        # whether to ask by the request's fine kind (so the share of questions is not set by
        # a handful of kinds), what to ask by its coarse kind (alike for a device's requests)
        if cue_draw("ask|" + reply_cue(prev, fine=True)) >= QUESTION_RATE:
            return None
        h = cue_draw("what|" + reply_cue(prev))
        offer = _unset_param(prev, touched, h) if h < OFFER_RATE else None
        return offer or (("more", "", "") if h < OFFER_RATE + 0.8 * (1 - OFFER_RATE) else ("check", "", ""))
    if rng.random() >= p.style.question_rate:
        return None
    other = pick_device(rng, p, avoid) if avoid is not None and rng.random() < CROSS_OFFER else None
    if other:
        return ("offer", other, "")
    return ("more", "", "") if rng.random() < 0.8 else ("check", "", "")


def _offer(chunk: Actions, touched: Actions) -> Question:
    """Offer the chunk's first device, or its first parameter when the device is already set
    ("Would you like me to adjust the brightness as well?")."""
    dev = next(iter(chunk))
    if dev in touched:
        return ("offer_param", dev, next(iter(chunk[dev])))
    level = chunk[dev].get("brightness") if dev == "lights" else None
    return ("offer", dev, "" if level is None else "low" if level <= 40 else "high" if level >= 70 else "")


def _next_chunk(rng: random.Random, p: Profile, prev: AssistantAct, chunk: Actions, touched: Actions,
                routine: bool) -> Step:
    """The user gets the next settings: by accepting an offer, or by asking (after declining
    an offer of something else)."""
    dev = next(iter(chunk))
    if dev not in touched and rng.random() < p.style.offer_rate * CROSS_OFFER:
        prev.question = _offer(chunk, touched)  # this user's assistant offers the next device
    else:
        prev.question = _ending_question(rng, p, prev, touched, set(touched) | set(chunk))
    q = prev.question
    if q and q[0] in ("offer", "offer_param") and q[1] == dev and (q[0] == "offer" or q[2] in chunk[dev]):
        how = "usual" if routine and rng.random() < 0.5 else "exact" if rng.random() < 0.6 else "wish"
        return Step(UserAct("accept", chunk, how), AssistantAct("confirm", chunk, how != "exact"))
    how = "exact" if rng.random() < p.style.exact_rate else "wish"
    return Step(UserAct("request", chunk, how), AssistantAct("confirm", chunk, how != "exact"))


def _closing(rng: random.Random, p: Profile, prev: AssistantAct, touched: Actions) -> Step:
    """Thanks (or a declined offer) and the assistant's goodbye."""
    other = pick_device(rng, p, set(touched))
    more: Optional[Question] = ("more", "", "") if rng.random() < 0.25 else None
    if other and rng.random() < CROSS_OFFER:
        prev.question = ("offer", other, "")
        return Step(UserAct("decline"), AssistantAct("close", after_decline=True))
    prev.question = _ending_question(rng, p, prev, touched)
    return Step(UserAct("thanks"), AssistantAct("close", question=more))


def _filler(rng: random.Random, p: Profile, prev: AssistantAct, touched: Actions,
            meta: dict[str, str]) -> Optional[Step]:
    """A middle step once the planned settings are done: an adjustment or another device."""
    adjust = adjustment(rng, touched) if rng.random() < 0.35 else None
    if adjust:
        settings, direction = adjust
        prev.question = ("check", "", "") if rng.random() < p.style.question_rate else None
        how = "relative" if rng.random() < 0.55 else "exact"
        return Step(UserAct("adjust", settings, how, direction),
                    AssistantAct("confirm", settings, direction=direction))
    dev = pick_device(rng, p, set(touched))
    if dev is None:
        return None
    return _next_chunk(rng, p, prev, {dev: spontaneous_settings(rng, p, dev, meta)}, touched, routine=False)


def plan_session(rng: random.Random, p: Profile, chunks: list[Actions], turns: int, routine: bool,
                 meta: dict[str, str]) -> list[Step]:
    """`turns` steps covering `chunks` (mutated), then adjustments, other devices or a goodbye."""
    chunks = list(chunks)
    steps = _opening(rng, p, chunks.pop(0), routine, turns)
    touched: Actions = {}
    for s in steps:
        _merge(touched, s.assistant.settings)
    while len(steps) < turns:
        prev, left = steps[-1].assistant, turns - len(steps)
        step: Optional[Step] = None
        if chunks and (left >= 2 or rng.random() < 0.5):
            step = _next_chunk(rng, p, prev, chunks.pop(0), touched, routine)
        elif left == 1 and rng.random() < 0.75:
            step = _closing(rng, p, prev, touched)
        else:
            step = _filler(rng, p, prev, touched, meta) or _closing(rng, p, prev, touched)
        _merge(touched, step.assistant.settings)
        steps.append(step)
        if step.assistant.kind == "close":
            break  # a goodbye ends the session, whatever was planned
    last = steps[-1].assistant
    if last.kind == "confirm" and last.question is None:
        other = pick_device(rng, p, set(touched))
        last.question = (("offer", other, "") if other and rng.random() < CROSS_OFFER
                         else _ending_question(rng, p, last, touched))
    return steps


# --- Sessions ---------------------------------------------------------------------------------

def _realize(rng: random.Random, alt_rng: random.Random, p: Profile, meta: dict[str, str],
             steps: list[Step], activity: Optional[str]) -> list[Message]:
    """Word the plan: user text, assistant text, and a re-phrasing of the assistant text
    with the same parts (remarks, question, name) in words drawn independently."""
    user, assistant = Scene(meta, activity), Scene(meta, activity)
    messages: list[Message] = []
    for i, step in enumerate(steps):
        user.first = assistant.first = i == 0
        prev_q = steps[i - 1].assistant.question if i else None
        messages.append(Message("user", render_user(rng, p, step.user, user, prev_q)))
        remarks = decide_remarks(rng, p, step.assistant, assistant)
        text = render_assistant(rng, p, step.assistant, assistant, remarks)
        for _ in range(10):  # a re-phrasing identical to the text measures nothing
            alt_text = render_assistant(alt_rng, p, step.assistant, assistant, remarks, alt=True)
            if alt_text != text:
                break
        actions = {dev: dict(params) for dev, params in step.assistant.settings.items()}
        messages.append(Message("assistant", text, actions=actions, alt_text=alt_text))
    return messages


def _spontaneous_context(rng: random.Random, p: Profile) -> dict[str, str]:
    """A context that matches none of the user's routines (else it would be a routine's)."""
    meta = sample_context(rng, {}, p.context)
    for _ in range(40):
        if not any(matches(r.triggers, meta) for r in p.routines):
            break
        meta = sample_context(rng, {}, p.context)
    return meta


def turn_weights(p: Profile) -> dict[int, float]:
    """Weights of 2–7 assistant turns for this user: TURN_WEIGHTS tilted towards longer
    dialogues the more talkative the user is."""
    tilt = 1.2 * (p.style.verbosity - MEAN_VERBOSITY)
    return {t: w * math.exp(tilt * (t - 4)) for t, w in TURN_WEIGHTS.items()}


def make_session(rng: random.Random, alt_rng: random.Random, p: Profile, session_id: int) -> Session:
    """One dialogue: routine-driven (context matches the routine) or spontaneous."""
    if p.routines and rng.random() < p.routine_share:
        index = rng.choices(range(len(p.routines)), weights=p.routine_weights)[0]
        routine = p.routines[index]
        meta = sample_context(rng, routine.triggers, p.context)
        chunks, activity, applied = routine_chunks(rng, routine), p.activities[index], [index]
    else:
        meta = _spontaneous_context(rng, p)
        chunks, activity, applied = spontaneous_chunks(rng, p, meta), None, []
    weights = turn_weights(p)
    turns = rng.choices(list(weights), weights=list(weights.values()))[0]
    steps = plan_session(rng, p, chunks, turns, bool(applied), meta)
    messages = _realize(rng, alt_rng, p, meta, steps, activity)
    return Session(session_id=session_id, meta=meta, messages=messages, applied_routines=applied)


def make_sessions(rng: random.Random, alt_rng: random.Random, p: Profile, sessions: int) -> list[Session]:
    """The user's `sessions` dialogues, in the order they happened."""
    return [make_session(rng, alt_rng, p, sid) for sid in range(sessions)]
