"""Wording of the user simulator: planned acts -> user and assistant text in the user's style.

Assistant text follows the phrasing conventions at the top of `synth_phrases` (a parser
relies on them); user text follows only the user's own way of speaking.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional

from personal.data.schema import Actions
from personal.data.synth_phrases import (ADJUST_RELATIVE, ASSISTANT_ALIASES, BANK, FRAMES, HEAD, JOINERS,
                                         NUMERIC, PARAM_OFFER_WHAT, PARAM_ORDERS, PARAM_WORDS,
                                         PLURAL_ALIASES, REASONS, SECURITY_FRAMES, SECURITY_TAIL, TAIL,
                                         USER_BANK, USER_FRAMES, USER_VALUE, WISHES, Voice, capitalise)

if TYPE_CHECKING:  # only for annotations: synth_session imports this module
    from personal.data.synth_session import AssistantAct, Question, UserAct
    from personal.data.synth_users import Profile


def _fmt(value: Any) -> str:
    return str(value)


def _alias(rng: random.Random, voice: Voice, dev: str) -> str:
    return voice.pick(rng, f"alias_{dev}", ASSISTANT_ALIASES[dev])


def _with_name(sentence: str, name: str) -> str:
    """'Sure.' -> 'Sure, Ethan.' (the name before the final punctuation)."""
    body, end = sentence[:-1], sentence[-1]
    if end not in ".!?":
        body, end = sentence, "."
    return f"{body}, {name}{end}"


# --- Assistant: settings ---------------------------------------------------------------------

def _frame_tags(dev: str, head: str, value: Any, direction: int) -> set[str]:
    """Requirement tags this clause offers to the frames (see `synth_phrases.FRAMES`)."""
    tags = set()
    if (dev, head) in NUMERIC:
        tags.add("num")
    if head == "volume":
        tags.add("vol")
    if head == "input_source":
        tags.add("input")
    if dev == "lights" and head == "brightness":
        if value <= 40 or direction < 0:
            tags.add("low")
        if value >= 70 or direction > 0:
            tags.add("high")
    if dev == "ac" and head == "temperature" and direction:
        tags.add("temp_up" if direction > 0 else "temp_down")
    return tags


def device_clause(rng: random.Random, voice: Voice, dev: str, params: dict[str, Any],
                  direction: int = 0) -> str:
    """One sentence stating a device's new values (device named before its values)."""
    if dev == "security":
        return _security_clause(rng, voice, params)
    order = rng.choice(PARAM_ORDERS[dev])
    present = [k for k in order if k in params]
    head, tails = present[0], present[1:]
    frame = voice.pick(rng, f"frame_{dev}", FRAMES[dev], _frame_tags(dev, head, params[head], direction))
    if "volume to {p}" in frame or "volume is now {p}" in frame or "volume at {p}" in frame:
        phrase = _fmt(params[head])  # the frame already says "volume"
    else:
        phrase = voice.pick(rng, f"head_{dev}_{head}", HEAD[(dev, head)]).format(v=_fmt(params[head]))
    for k in tails:
        phrase += voice.pick(rng, f"tail_{dev}_{k}", TAIL[(dev, k)]).format(v=_fmt(params[k]))
    alias = _alias(rng, voice, dev)
    be = "are" if alias in PLURAL_ALIASES else "is"
    return frame.format(dev=alias, Dev=capitalise(alias), be=be, p=phrase)


def _security_clause(rng: random.Random, voice: Voice, params: dict[str, Any]) -> str:
    alias = _alias(rng, voice, "security")
    armed, volume = params.get("armed"), params.get("alarm_volume")
    if armed is None:
        frame = voice.pick(rng, "frame_security_volume", SECURITY_FRAMES["volume"])
        return frame.format(dev="security system", v=volume)
    tail = "" if volume is None else voice.pick(rng, "tail_security", SECURITY_TAIL).format(v=volume)
    key = "armed" if armed else "disarmed"
    frame = voice.pick(rng, f"frame_security_{key}", SECURITY_FRAMES[key])
    text = frame.format(dev=alias, Dev=capitalise(alias), t=tail)
    if not armed and volume is not None:  # never produced by the planner; kept correct anyway
        text += " " + voice.pick(rng, "frame_security_volume", SECURITY_FRAMES["volume"]).format(
            dev="security system", v=volume)
    return text


_TERSE_STARTS = ("AC", "Lights", "Lighting", "TV", "Speaker", "Television", "Air")


def _lower_start(clause: str) -> str:
    """Lower-case a clause's first word when it is an ordinary word ('The' -> 'the')."""
    first = clause.split(" ", 1)[0]
    ordinary = ("The", "Your", "Done,", "Lights", "Lighting", "Television", "Air", "Speaker")
    return clause[0].lower() + clause[1:] if first in ordinary else clause


def settings_text(rng: random.Random, voice: Voice, settings: Actions, direction: int = 0,
                  prefix: Optional[str] = None) -> str:
    """All settings of a turn as one or two sentences, optionally after a context remark."""
    clauses = [device_clause(rng, voice, dev, params, direction) for dev, params in settings.items()]
    if prefix and not clauses[0].startswith(_TERSE_STARTS):  # "Since it's late, lights set to…" reads badly
        clauses[0] = f"{prefix} {_lower_start(clauses[0])}"
    if len(clauses) == 2 and rng.random() < 0.45:
        return clauses[0][:-1] + voice.pick(rng, "joiner", JOINERS) + _lower_start(clauses[1])
    return " ".join(clauses)


# --- Assistant: whole turns ------------------------------------------------------------------

@dataclass
class Scene:
    """What a turn is worded in: the session's context and activity, whether this is the
    first turn, and which kinds of remark the speaker already made (so a user does not
    repeat "It's freezing outside" in every turn)."""

    meta: dict[str, str]
    activity: Optional[str]
    first: bool = True
    said: set[str] = field(default_factory=set)

    def fresh(self, rng: random.Random, kind: str, chance: float) -> bool:
        """Decide to make a remark of `kind`: at `chance`, a third of it once already made."""
        if rng.random() >= (chance / 3 if kind in self.said else chance):
            return False
        self.said.add(kind)
        return True


def context_tags(meta: dict[str, str]) -> set[str]:
    """Which context remarks and time-bound phrases fit this session's context."""
    tags = {meta["time_of_day"], meta["weather"], meta["outdoor_temp"].replace(" ", "_")}
    if meta["weather"] == "sunny" and meta["sun_phase"] != "daylight":
        tags.discard("sunny")  # a sunny day, but no sun out at night
    if meta["outdoor_temp"] in ("very cold", "cold"):
        tags.add("cold")
    if meta["time_of_day"] == "night":
        tags.add("late")
    if meta["time_of_day"] in ("evening", "night"):
        tags.add("dayend")
    if meta["sun_phase"] == "before_sunrise":
        tags.add("dark")
    if meta["sun_phase"] == "after_sunset" and meta["time_of_day"] == "evening":
        tags.add("dusk")
    return tags


def question_text(rng: random.Random, p: Profile, question: Question, activity: Optional[str]) -> str:
    """An offer, check, anything-else or clarifying question (never with a value)."""
    kind, dev, param = question
    v = p.voice
    if kind == "offer_param":
        what = v.pick(rng, f"what_{dev}_{param}", PARAM_OFFER_WHAT[(dev, param)])
        return v.pick(rng, "offer_param", BANK["offer_param"]).format(what=what)
    if kind == "offer":  # `param` holds the light level ("low" / "high") when one is known
        return v.pick(rng, "offer", BANK["offer"], {dev, param}).format(dev=_alias(rng, v, dev))
    if kind == "clarify":
        return v.pick(rng, "clarify", BANK["clarify"], {dev}).format(dev=_alias(rng, v, dev))
    if kind == "usual":
        return v.pick(rng, "clarify_usual", BANK["clarify_usual"]).format(a=activity or "evening")
    return v.pick(rng, kind, BANK[kind])


#: Share of confirming turns that open with "Sure." and the like whatever the user's habit:
#: real replies mostly open with one of a few such words.
OPENER_FLOOR = 0.7
#: Share of replies whose shape (an opener or not) follows from the kind of request answered
#: (`reply_cue`), the same for every user, rather than from the user's habits.
STRUCTURE_CUE = 0.95
#: Scale of the personal remarks (history, activity, warmth) of a confirming turn: real
#: replies mostly confirm and ask, and "Enjoy your reading, Ethan." is the exception.
REMARK_SCALE = 0.2
#: Scale of users' small talk (weather, activity, mood, …): enough to sound like people,
#: little enough that the request carries the turn (real user turns: ~18 words).
SMALL_TALK_SCALE = 0.45


def cue_draw(key: str) -> float:
    """A number in [0, 1) fixed by `key`: a decision the same for every user asking alike."""
    return zlib.crc32(key.encode()) % 1000 / 1000


@dataclass
class Remarks:
    """Which parts an assistant turn has besides its settings and question. Drawn once per
    turn (`decide_remarks`), so `text` and `alt_text` say the same things in other words."""

    greeting: bool = False  # "Good morning!" (first turn only)
    opener: bool = False  # "Sure."
    context: bool = False  # "Since it's raining, ..." before the settings (first turn only)
    history: bool = False  # "Just the way you like it."
    activity: bool = False  # "Enjoy your movie night!"
    warm: bool = False  # "Hope that's comfortable."
    tail: bool = False  # goodbye wish of a closing turn: "Have a lovely evening!"
    name: Optional[str] = None  # where the user's name goes: first | last | question


def decide_remarks(rng: random.Random, p: Profile, act: AssistantAct, scene: Scene) -> Remarks:
    """The user's assistant habits applied to this turn (remembering what it said before)."""
    s, r = p.style, Remarks()
    if act.kind == "confirm":
        r.greeting = scene.first and rng.random() < 0.1
        if rng.random() < STRUCTURE_CUE:  # as this kind of request is answered, whoever asks
            r.opener = not r.greeting and cue_draw("opener|" + reply_cue(act, fine=True)) < OPENER_FLOOR
        else:
            r.opener = not r.greeting and rng.random() < OPENER_FLOOR + (1 - OPENER_FLOOR) * s.opener_rate
        tags = context_tags(scene.meta)
        r.context = (scene.first and rng.random() < 0.1
                     and any(e.split("|")[0] in tags for e in BANK["context"]))
        r.history = act.from_history and scene.fresh(rng, "history", s.history_rate * REMARK_SCALE)
        r.activity = bool(scene.activity) and scene.fresh(rng, "activity", s.activity_rate * REMARK_SCALE)
        r.warm = not r.activity and scene.fresh(rng, "warm", s.warmth * 0.15 * REMARK_SCALE)
    elif act.kind == "close":
        r.activity = bool(scene.activity) and scene.fresh(rng, "activity", s.activity_rate * 1.5)
        r.tail = not r.activity and rng.random() < 0.6
    if rng.random() < s.name_rate:
        r.name = rng.choice(("first", "last", "question"))
    return r


def _confirm_sentences(rng: random.Random, p: Profile, act: AssistantAct, scene: Scene,
                       r: Remarks) -> list[str]:
    """Opening word, settings, and the personal remarks of a confirming turn."""
    v, tags = p.voice, context_tags(scene.meta)
    out = []
    if r.greeting:
        out.append(v.pick(rng, "greeting", BANK["greeting"], tags))
    if r.opener:
        out.append(v.pick(rng, "opener", BANK["opener"]))
    prefix = v.pick(rng, "context", BANK["context"], tags) if r.context else None
    out.append(settings_text(rng, v, act.settings, act.direction, prefix))
    if r.history:
        out.append(v.pick(rng, "history", BANK["history"]))
    if r.activity:
        out.append(v.pick(rng, "activity", BANK["activity"]).format(a=scene.activity))
    if r.warm:
        out.append(v.pick(rng, "warm", BANK["warm"], tags))
    return out


def _close_sentences(rng: random.Random, p: Profile, act: AssistantAct, scene: Scene,
                     r: Remarks) -> list[str]:
    v, tags = p.voice, context_tags(scene.meta)
    out = [v.pick(rng, "close_after_decline", BANK["close_after_decline"]) if act.after_decline
           else v.pick(rng, "close", BANK["close"])]
    if r.activity:
        out.append(v.pick(rng, "activity", BANK["activity"]).format(a=scene.activity))
    if r.tail:
        out.append(v.pick(rng, "close_tail", BANK["close_tail"], tags))
    return out


def _place_name(p: Profile, spot: str, sentences: list[str],
                question: Optional[str]) -> tuple[list[str], Optional[str]]:
    """Address the user by name in one sentence (the first, the last remark or the question)."""
    if spot == "question" and question:
        return sentences, _with_name(question, p.name)
    if spot == "first" or len(sentences) == 1:
        sentences[0] = _with_name(sentences[0], p.name)
    else:
        sentences[-1] = _with_name(sentences[-1], p.name)
    return sentences, question


def reply_cue(act: AssistantAct, fine: bool = False) -> str:
    """What kind of request the assistant answers: the act and its devices (values left out);
    `fine` adds the parameters set. Replies to requests of one kind share their wording (the
    coarse kind, so requests for one device read alike) and their shape (the fine kind, so
    the shares of turns with an opener or a question are not set by a handful of kinds)."""
    kind = f"{act.kind}|{','.join(act.settings)}|{act.direction}|{act.after_decline}"
    if fine:
        kind += "|" + ";".join(f"{d}:{','.join(sorted(ps))}" for d, ps in act.settings.items())
    return kind


def render_assistant(rng: random.Random, p: Profile, act: AssistantAct, scene: Scene,
                     remarks: Remarks, alt: bool = False) -> str:
    """The assistant's text for `act` with the parts in `remarks`, worded as replies to this
    kind of request are (`reply_cue`) in this user's register. `alt` words the re-phrasing
    (`alt_text`): another generator and another cued wording, as a second assistant whose
    replies follow from requests just as much would say it."""
    salt = "alt|" if alt else ""
    with p.voice.cued(salt + reply_cue(act)):
        return _render_assistant(rng, p, act, scene, remarks, salt)


def _render_assistant(rng: random.Random, p: Profile, act: AssistantAct, scene: Scene,
                      remarks: Remarks, salt: str) -> str:
    if act.kind == "confirm":
        sentences = _confirm_sentences(rng, p, act, scene, remarks)
    elif act.kind == "clarify":
        sentences = [p.voice.pick(rng, "clarify_lead", BANK["clarify_lead"])]
    else:
        sentences = _close_sentences(rng, p, act, scene, remarks)
    question = None
    if act.question:
        with p.voice.cued(salt + "question|" + "/".join(act.question)):
            question = question_text(rng, p, act.question, scene.activity)
    if remarks.name:
        sentences, question = _place_name(p, remarks.name, sentences, question)
    return " ".join(sentences + ([question] if question else []))


# --- User turns ---------------------------------------------------------------------------------

def _user_values(rng: random.Random, dev: str, params: dict[str, Any]) -> str:
    """'22 degrees with heat mode' — a user's way of listing values (no device)."""
    parts = [rng.choice(USER_VALUE[(dev, k)]).format(v=_fmt(v)) for k, v in params.items() if k != "armed"]
    if len(parts) <= 1:
        return "".join(parts)  # "" when the only value is armed / disarmed
    return parts[0] + " with " + " and ".join(parts[1:])


def _user_vp(rng: random.Random, p: Profile, dev: str, params: dict[str, Any]) -> str:
    """An exact request for one device as a verb phrase ('set the aircon to 22 degrees')."""
    nick = p.style.nicknames[dev]
    if dev == "security":
        volume = params.get("alarm_volume")
        if "armed" not in params:
            return f"set the alarm volume to {volume}"
        vp = f"{'arm' if params['armed'] else 'disarm'} the {nick}"
        return vp + (f" with the alarm volume at {volume}" if volume is not None else "")
    return rng.choice(USER_FRAMES[dev]).format(nick=nick, p=_user_values(rng, dev, params))


def _direction(dev: str, params: dict[str, Any]) -> str:
    """The key of a device's settings in WISHES and REASONS (heat, low, armed, …)."""
    if dev == "ac":
        key = params.get("mode", "auto")
    elif dev == "lights":
        level = params.get("brightness")
        key = "mid" if level is None else "low" if level <= 40 else "high" if level >= 70 else "mid"
    elif dev == "security":
        key = "disarmed" if params.get("armed") is False else "armed"
    else:
        key = "any"
    return key


def _wish_vp(rng: random.Random, p: Profile, dev: str, params: dict[str, Any]) -> str:
    """A request for one device without values ('warm the room up a bit')."""
    return rng.choice(WISHES[(dev, _direction(dev, params))]).format(nick=p.style.nicknames[dev])


def _reason(rng: random.Random, p: Profile, settings: Actions, chance: float) -> list[str]:
    """Sometimes, why the user wants it ("It's a bit chilly in here.")."""
    if not settings or rng.random() >= chance:
        return []
    dev, params = next(iter(settings.items()))
    return [capitalise(rng.choice(REASONS[(dev, _direction(dev, params))])) + "."]


def _pick_user(rng: random.Random, p: Profile, bank: str, tags: Iterable[str] = ()) -> str:
    return p.voice.pick(rng, f"user_{bank}", USER_BANK[bank], tags)


def _core_request(rng: random.Random, p: Profile, act: UserAct, activity: Optional[str]) -> str:
    """The request itself: exact values, a wish without values, or "the usual"."""
    if act.how == "usual" and activity:
        return _pick_user(rng, p, "usual").format(a=activity)
    if act.how == "exact":
        vp = " and ".join(_user_vp(rng, p, d, params) for d, params in act.settings.items())
        bank = "request"
    else:
        vp = " and ".join(_wish_vp(rng, p, d, params) for d, params in act.settings.items())
        bank = "wish_frame"
    return _pick_user(rng, p, bank).format(vp=vp, Vp=capitalise(vp))


def _small_talk(rng: random.Random, p: Profile, scene: Scene, weight: float, greet: bool = False,
                activity: bool = True) -> list[str]:
    """Greeting, weather, activity, hobby or mood remarks: how many depends on the user's
    verbosity and on the turn (`weight`: 1 for an opening, less for a reply); each kind of
    remark rarely comes twice in a session."""
    s, tags = p.style, context_tags(scene.meta)
    out = []
    if greet and rng.random() < 0.55:
        out.append(_pick_user(rng, p, "greeting", tags))
    doing = 0.65 if activity and scene.activity else 0.0
    chances = [("weather", 0.3 + 0.5 * s.verbosity), ("doing", doing),
               ("hobby", 0.1 + 0.3 * s.verbosity), ("mood", 0.1 + 0.35 * s.verbosity),
               ("aside", 0.15 + 0.35 * s.verbosity)]
    for bank, chance in chances:
        if scene.fresh(rng, bank, chance * weight * SMALL_TALK_SCALE):
            # warm people mostly say cheerful things, dry ones mostly complain
            mood = {"pos" if rng.random() < s.warmth else "neg"} if bank == "mood" else set()
            text = _pick_user(rng, p, bank, tags | mood)
            out.append(capitalise(text.format(a=scene.activity or "", h=rng.choice(p.hobbies))))
    return out


def _adjust_text(rng: random.Random, p: Profile, act: UserAct) -> str:
    (dev, params), = act.settings.items()
    (param, value), = params.items()
    lead = _pick_user(rng, p, "adjust_lead")
    if act.how == "relative":
        ask = rng.choice(ADJUST_RELATIVE[(dev, param, act.direction)])
        return f"{lead} " + ask.format(nick=p.style.nicknames[dev])
    unit = {"temperature": " degrees", "brightness": "%"}.get(param, "")
    return f"{lead} could you change the {p.style.nicknames[dev]} {PARAM_WORDS[param]} to {value}{unit}?"


#: Share of accepted offers where the user restates what they accept (device and values, or
#: the wish) rather than only values or a bare "yes".
ACCEPT_RESTATES = 0.7


def _reply_text(rng: random.Random, p: Profile, act: UserAct) -> list[str]:
    """Accepting an offer or answering a question: yes, and maybe the values."""
    values = " and ".join(filter(None, (_user_values(rng, d, params) for d, params in act.settings.items())))
    if act.kind == "answer":
        bank = "answer_usual" if act.how == "usual" else "answer"
        return [_pick_user(rng, p, bank).format(p=values, P=capitalise(values))]
    out = [_pick_user(rng, p, "accept")]
    if act.how == "usual":
        if rng.random() < 0.75:
            out.append(_pick_user(rng, p, "accept_usual"))
    elif rng.random() < ACCEPT_RESTATES:  # "Yes, please. Could you set the lights to 40%?"
        out.append(_core_request(rng, p, act, None))
    elif act.how == "exact" and values:
        out.append(_pick_user(rng, p, "accept_exact").format(p=values, P=capitalise(values)))
    return out


def _finish(rng: random.Random, p: Profile, sentences: list[str]) -> str:
    """Catchphrases, exclamation marks and lower case: the user's habits."""
    s = p.style
    if rng.random() < 0.2:
        sentences.append(rng.choice(s.catchphrases))
    text = " ".join(x for x in sentences if x)
    if text.endswith(".") and rng.random() < s.warmth * 0.3:
        text = text[:-1] + "!"
    return text.lower() if s.lowercase else text


def render_user(rng: random.Random, p: Profile, act: UserAct, scene: Scene,
                prev_question: Optional[Question]) -> str:
    """The user's text for `act`, in their own way of speaking."""
    talk = min(1.0, 0.45 + 0.7 * p.style.verbosity)  # chance of saying why, scaled per turn below
    declined = prev_question is not None and prev_question[0] in ("offer", "offer_param")  # not taken up
    if act.kind in ("open", "request"):
        usual = act.how == "usual" and scene.activity is not None  # names the activity itself
        sentences = _small_talk(rng, p, scene, 1.0 if scene.first else 0.6, scene.first, not usual)
        if declined:
            sentences.insert(0, _pick_user(rng, p, "not_now"))
        elif prev_question and rng.random() < 0.6:
            sentences.insert(0, _pick_user(rng, p, "ack"))
        sentences.append(_core_request(rng, p, act, scene.activity))
        sentences += [] if usual else _reason(rng, p, act.settings, 0.6 * talk)
    elif act.kind in ("accept", "answer"):
        sentences = (_reply_text(rng, p, act) + _reason(rng, p, act.settings, 0.8 * talk)
                     + _small_talk(rng, p, scene, 0.7))
    elif act.kind == "adjust":
        sentences = [_adjust_text(rng, p, act)] + _small_talk(rng, p, scene, 0.4)[:1]
    else:
        sentences = [_pick_user(rng, p, act.kind)] + _small_talk(rng, p, scene, 0.9)[:2]
    return _finish(rng, p, sentences)
