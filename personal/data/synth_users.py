"""The simulated users: session contexts, style traits, preferred values and routines.

Part of the user simulator (`personal.data.synth` describes the whole pipeline). Every
function takes its `random.Random` from the caller, so nothing here touches global state.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from personal.data.schema import DEVICES, META_FIELDS, Actions, Routine
from personal.data.synth_names import BACKGROUND_NAMES, EVAL_NAMES, SURNAMES
from personal.data.synth_phrases import USER_BANK, USER_NICKNAMES, Voice, parse_entry, user_key_of
from personal.data.synth_world import (ARCHETYPES, DEFAULT_PREFS, SPEECH_DESCRIPTIONS, TEMPLATES,
                                       Archetype, RoutineTemplate)

POPULATIONS = {"eval": EVAL_NAMES, "background": BACKGROUND_NAMES}

# --- Context ------------------------------------------------------------------------------

#: Which sun phases can go with a time of day.
SUN_FOR_TIME = {"morning": ("before_sunrise", "daylight"), "afternoon": ("daylight",),
                "evening": ("daylight", "after_sunset"), "night": ("after_sunset", "before_sunrise")}
#: P(weather | outdoor temperature); a zero means the pair never happens (no hot snow).
WEATHER_GIVEN_TEMP = {
    "very cold": {"snowy": 0.4, "cloudy": 0.35, "sunny": 0.25},
    "cold": {"snowy": 0.2, "rainy": 0.3, "cloudy": 0.3, "sunny": 0.2},
    "mild": {"rainy": 0.3, "cloudy": 0.35, "sunny": 0.35},
    "warm": {"sunny": 0.5, "cloudy": 0.3, "rainy": 0.2},
    "hot": {"sunny": 0.75, "cloudy": 0.25},
}
#: The population's context prior per meta field (weather: multipliers of WEATHER_GIVEN_TEMP;
#: sun phase: multipliers among the phases a time of day allows).
PRIOR = {"time_of_day": {"morning": 0.3, "afternoon": 0.2, "evening": 0.32, "night": 0.18},
         "day_of_week": {"weekday": 5 / 7, "weekend": 2 / 7},
         "sun_phase": {"before_sunrise": 1.0, "daylight": 1.0, "after_sunset": 1.0},
         "weather": {"sunny": 1.0, "cloudy": 1.0, "rainy": 1.0, "snowy": 1.0},
         "outdoor_temp": {"very cold": 0.12, "cold": 0.25, "mild": 0.3, "warm": 0.2, "hot": 0.13}}
#: Context weights in the layout of PRIOR (one user's, or the population's).
ContextWeights = dict[str, dict[str, float]]


def consistent(meta: dict[str, str]) -> bool:
    """True when the (possibly partial) context has no contradiction: night is never in
    daylight, snow is never warm."""
    tod, sun = meta.get("time_of_day"), meta.get("sun_phase")
    if tod and sun and sun not in SUN_FOR_TIME[tod]:
        return False
    temp, weather = meta.get("outdoor_temp"), meta.get("weather")
    return not (temp and weather and weather not in WEATHER_GIVEN_TEMP[temp])


def _weighted(rng: random.Random, weights: dict[Any, float]) -> Any:
    keys = [k for k, w in weights.items() if w > 0]
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def context_weights(rng: random.Random, tilt: dict[str, dict[str, float]]) -> ContextWeights:
    """One user's context prior: the population's, times the archetype's `tilt` (when its
    members are at home asking for things, which weather makes them ask), times a personal
    jitter of each weight — members of an archetype alike but not equal."""
    return {f: {v: w * tilt.get(f, {}).get(v, 1.0) * math.exp(rng.gauss(0.0, 0.2))
                for v, w in PRIOR[f].items()} for f in META_FIELDS}


def _climate(rng: random.Random, weights: ContextWeights, temp: Optional[str],
             weather: Optional[str]) -> tuple[str, str]:
    """Outdoor temperature and weather drawn together (never hot snow), keeping fixed ones."""
    pairs = {(t, w): weights["outdoor_temp"][t] * p * weights["weather"][w]
             for t, given in WEATHER_GIVEN_TEMP.items() for w, p in given.items()
             if temp in (None, t) and weather in (None, w)}
    return _weighted(rng, pairs)


def sample_context(rng: random.Random, fixed: dict[str, str],
                   weights: Optional[ContextWeights] = None) -> dict[str, str]:
    """A full, consistent session context that keeps every field in `fixed`; free fields
    follow `weights` (a user's `context_weights`; default: the population's prior)."""
    if not consistent(fixed):
        raise ValueError(f"inconsistent triggers {fixed}")
    w = weights or PRIOR
    sun_fixed = fixed.get("sun_phase")
    tod = fixed.get("time_of_day") or _weighted(rng, {
        t: x for t, x in w["time_of_day"].items() if sun_fixed is None or sun_fixed in SUN_FOR_TIME[t]})
    sun = sun_fixed or _weighted(rng, {s: w["sun_phase"][s] for s in SUN_FOR_TIME[tod]})
    temp, weather = _climate(rng, w, fixed.get("outdoor_temp"), fixed.get("weather"))
    dow = fixed.get("day_of_week") or _weighted(rng, w["day_of_week"])
    return {"time_of_day": tod, "day_of_week": dow, "sun_phase": sun, "weather": weather,
            "outdoor_temp": temp}


def matches(triggers: dict[str, str], meta: dict[str, str]) -> bool:
    """True when every trigger field has the context's value."""
    return all(meta.get(k) == v for k, v in triggers.items())


def climate_mode(outdoor_temp: Optional[str]) -> str:
    """The AC mode that fits the weather: heat when cold, cool when warm, auto otherwise."""
    if outdoor_temp in ("very cold", "cold"):
        return "heat"
    if outdoor_temp in ("warm", "hot"):
        return "cool"
    return "auto"


# --- Users ----------------------------------------------------------------------------------

@dataclass
class Style:
    """Style traits of one user (all rates are probabilities per turn)."""

    verbosity: float  # 0..1: how much a user says beyond the request
    formality: float
    warmth: float
    register: str  # "f" formal, "c" casual, "n" neutral: which phrase-bank entries fit
    name_rate: float  # assistant addresses the user by name
    question_rate: float  # assistant ends a turn with a check / anything-else question
    offer_rate: float  # assistant offers the next device instead of waiting to be asked
    activity_rate: float  # assistant mentions what the user is doing
    history_rate: float  # assistant remarks that a value is the user's usual one
    opener_rate: float  # assistant starts with "Sure." and the like
    exact_rate: float  # user states exact values (else a wish or "the usual")
    clarify_rate: float  # assistant asks back when the user only states a wish
    catchphrases: tuple[str, ...]
    nicknames: dict[str, str]
    lowercase: bool  # casual texter: no capitals


@dataclass
class Profile:
    """A simulated user: everything the simulator needs beyond the written Persona."""

    index: int
    population: str
    name: str
    surname: str
    gender: str
    archetype: Archetype
    occupation: str
    hobbies: tuple[str, ...]
    age: int
    style: Style
    voice: Voice
    prefs: dict[str, Any]
    context: ContextWeights = field(default_factory=dict)  # this user's context prior
    routines: list[Routine] = field(default_factory=list)
    activities: list[str] = field(default_factory=list)  # one per routine
    routine_weights: list[float] = field(default_factory=list)
    affinity: dict[str, float] = field(default_factory=dict)  # device -> weight (spontaneous)
    routine_share: float = 0.75


def _clip(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return min(hi, max(lo, x))


def _grid(rng: random.Random, lo: int, hi: int, step: int) -> int:
    return rng.randrange(lo, hi + 1, step)


def _catchphrases(rng: random.Random, register: str) -> tuple[str, ...]:
    fits = [text for tags, text in map(parse_entry, USER_BANK["catchphrase"])
            if not (tags & {"f", "c"}) or register in tags]
    return tuple(rng.sample(fits, 2))


def make_style(rng: random.Random, arch: Archetype) -> Style:
    """Traits around the archetype's priors: members alike but not equal. The assistant's
    habits follow the archetype's tone (warm archetypes get more questions and remarks,
    formal ones more offers and openers), so they cluster by archetype too."""
    prior = arch.style
    formality = _clip(rng.gauss(prior["formality"], 0.08))
    register = "f" if formality > 0.62 else "c" if formality < 0.38 else "n"

    def around(centre: float, spread: float = 0.07) -> float:
        return _clip(rng.gauss(centre, spread), 0.02, 0.95)

    return Style(
        verbosity=_clip(rng.gauss(prior["verbosity"], 0.08)), formality=formality,
        warmth=_clip(rng.gauss(prior["warmth"], 0.08)), register=register,
        name_rate=_clip(prior["name"] * math.exp(rng.gauss(0.0, 0.35)), 0.005, 0.4),
        question_rate=around(0.5 + 0.35 * prior["warmth"]),
        offer_rate=around(0.45 + 0.4 * prior["formality"]),
        activity_rate=around(0.08 + 0.35 * prior["warmth"], 0.05), history_rate=rng.uniform(0.15, 0.5),
        opener_rate=around(0.15 + 0.4 * prior["formality"]),
        # most requests name their values (a wish alone is the exception that only the
        # user's history resolves): real replies follow from their requests (issue 18)
        exact_rate=around(0.85 - 0.3 * prior["verbosity"]),
        clarify_rate=around(0.1 + 0.15 * prior["formality"]), catchphrases=_catchphrases(rng, register),
        nicknames={d: rng.choice(n) for d, n in USER_NICKNAMES.items()},
        lowercase=register == "c" and rng.random() < 0.35)


def archetype_prefs(arch: Archetype) -> dict[str, Any]:
    """The archetype's ranges of preferences: its own where `synth_world` gives them, else a
    narrower part of the default range (half as wide) and a sharper favourite, drawn once
    from the archetype's name — a fixed property of the world, the same for every seed, so
    members of an archetype lean the same way where nobody wrote down how."""
    world = random.Random(f"world:{arch.key}")
    out: dict[str, Any] = {}
    for key, default in DEFAULT_PREFS.items():  # every key drawn, so the draws never shift
        if isinstance(default, tuple):
            lo, hi, step = default
            span = (hi - lo) // (2 * step) * step
            start = lo + step * world.randint(0, (hi - lo - span) // step)
            derived: Any = (start, start + span, step)
        else:
            derived = {c: w * world.choice((0.5, 1.0, 3.0)) for c, w in default.items()}
        out[key] = arch.prefs.get(key, derived)
    return out


def make_prefs(rng: random.Random, arch: Archetype) -> dict[str, Any]:
    """Preferred values (ints on their grid, categorical favourites) for one user."""
    ranges = archetype_prefs(arch)
    return {key: _grid(rng, *spec) if isinstance(spec, tuple) else _weighted(rng, spec)
            for key, spec in ranges.items()}


#: Which preference shifts a template's fixed range of a parameter: by the user's distance
#: from the middle of that preference's default range (a loud-TV user has every TV routine
#: louder), so setting ranges follow the archetype and the person, not only the template.
SHIFTED_BY = {("lights", "brightness"): "light_shift", ("tv", "volume"): "tv_volume",
              ("tv", "brightness"): "tv_brightness", ("speaker", "volume"): "speaker_volume",
              ("security", "alarm_volume"): "alarm_volume", ("ac", "fan_speed"): "fan"}
#: The categorical preference behind a template's "choice" of a parameter.
CHOICE_PREF = {("lights", "color"): "light_color", ("lights", "mode"): "light_mode",
               ("speaker", "equalizer"): "eq", ("tv", "input_source"): "tv_input"}


def _shift(prefs: dict[str, Any], device: str, param: str, step: int) -> int:
    key = SHIFTED_BY.get((device, param))
    if key is None:
        return 0
    lo, hi, _ = DEFAULT_PREFS[key]
    return step * round((prefs[key] - (lo + hi) / 2) / step)


def _in_schema(value: int, device: str, param: str) -> int:
    bounds = DEVICES[device][param]
    return min(bounds.hi, max(bounds.lo, value))  # type: ignore[union-attr]


def resolve_value(rng: random.Random, spec: tuple, prefs: dict[str, Any],
                  outdoor_temp: Optional[str], device: str, param: str) -> Any:
    """One concrete value of a template's value spec (see `synth_world`)."""
    kind = spec[0]
    if kind == "int":
        return _in_schema(_grid(rng, *spec[1:]) + _shift(prefs, device, param, spec[3]), device, param)
    if kind == "const":
        return spec[1]
    if kind == "choice":
        key = CHOICE_PREF.get((device, param))
        favourite = prefs[key] if key else None
        return favourite if favourite in spec[1] and rng.random() < 0.7 else rng.choice(spec[1])
    if kind == "climate_mode":
        return climate_mode(outdoor_temp)
    if kind == "climate_temp":
        key = {"heat": "heat_temp", "cool": "cool_temp", "auto": "auto_temp"}[climate_mode(outdoor_temp)]
        spec = ("pref", key, spec[1])
    if spec[0] == "pref":  # the preference ± `jitter` steps of its grid, kept in the schema
        step = DEFAULT_PREFS[spec[1]][2]
        return _in_schema(prefs[spec[1]] + step * rng.randint(-spec[2], spec[2]), device, param)
    if kind == "cpref":
        choices = DEVICES[device][param].choices  # type: ignore[union-attr]
        return prefs[spec[1]] if rng.random() < 0.8 else rng.choice(choices)
    raise ValueError(f"unknown value spec {spec!r}")


def make_routine(rng: random.Random, tpl: RoutineTemplate, prefs: dict[str, Any],
                 context: Optional[ContextWeights] = None) -> Routine:
    """An instance of `tpl`: triggers (always-set fields plus some optional ones, values
    drawn by the user's `context` weights) and the user's values for its devices."""
    w = context or PRIOR

    def pick(f: str, opts: tuple[str, ...]) -> str:
        return _weighted(rng, {o: w[f][o] for o in opts})

    for _ in range(50):
        triggers = {f: pick(f, opts) for f, opts in tpl.triggers.items()}
        triggers.update({f: pick(f, opts) for f, opts in tpl.optional.items() if rng.random() < 0.4})
        if consistent(triggers):
            break
    else:
        raise ValueError(f"template {tpl.key} gives no consistent triggers")
    triggers = {f: triggers[f] for f in META_FIELDS if f in triggers}  # canonical field order
    devices = dict(tpl.devices)
    # the AC is the device people touch most (DATA.md): an optional AC is kept more often
    devices.update({d: p for d, p in tpl.optional_devices.items()
                    if rng.random() < (0.6 if d == "ac" else 0.45)})
    outdoor = triggers.get("outdoor_temp")
    actions: Actions = {}
    for dev in DEVICES:  # schema order, so files do not depend on template writing order
        if dev in devices:
            actions[dev] = {param: resolve_value(rng, devices[dev][param], prefs, outdoor, dev, param)
                            for param in DEVICES[dev] if param in devices[dev]}
    return Routine(triggers=triggers, actions=actions)


def make_routines(rng: random.Random, profile: Profile) -> None:
    """3–6 routines: the archetype's signature template (its heaviest: every early riser
    has a wake-up routine, and it is the one they use most), more of its templates, and
    sometimes one from another archetype (individual variation); no two with the same
    triggers."""
    weights = dict(profile.archetype.templates)
    # orderly (formal) archetypes keep more routines
    drawn = round(rng.gauss(3.2 + 2.6 * profile.archetype.style["formality"], 0.6))
    count = min(6, len(weights), max(3, drawn))
    keys: list[str] = [max(weights, key=weights.__getitem__)]
    while len(keys) < count:
        pool = {k: w for k, w in weights.items() if k not in keys}
        keys.append(_weighted(rng, pool))
    if rng.random() < 0.15:
        outsiders = [k for k in TEMPLATES if k not in weights]
        keys[-1] = rng.choice(outsiders)
    for key in keys:
        tpl = TEMPLATES[key]
        for _ in range(20):
            routine = make_routine(rng, tpl, profile.prefs, profile.context)
            if all(routine.triggers != r.triggers for r in profile.routines):
                break
        else:
            continue  # this user cannot hold another distinct instance; skip the template
        profile.routines.append(routine)
        profile.activities.append(rng.choice(tpl.activities))
        profile.routine_weights.append(rng.uniform(2.0, 4.0) if key == keys[0] else rng.uniform(1.0, 3.0))


def character_sketch(p: Profile) -> str:
    """A prose sketch: who the user is, what they enjoy, how they speak, their habits."""
    he = "he" if p.gender == "m" else "she"
    s = p.style
    speech = ", ".join([
        SPEECH_DESCRIPTIONS["formality"][s.formality >= 0.5],
        SPEECH_DESCRIPTIONS["verbosity"][s.verbosity >= 0.5],
        SPEECH_DESCRIPTIONS["warmth"][s.warmth >= 0.5]])
    acts = list(dict.fromkeys(p.activities))[:3]
    habits = acts[0] if len(acts) == 1 else ", ".join(acts[:-1]) + " and " + acts[-1]
    return (f"{p.name} {p.surname} is a {p.age}-year-old {p.occupation}, {p.archetype.description}. "
            f"{he.capitalize()} enjoys {p.hobbies[0]} and {p.hobbies[1]}. "
            f"{he.capitalize()} speaks {speech}, often saying \"{s.catchphrases[0].rstrip('.')}\". "
            f"At home {he} has set routines for {habits}.")


def make_profile(population: str, seed: int, index: int, arch: Archetype,
                 name: tuple[str, str], rng: random.Random) -> Profile:
    """One user drawn from `arch`, with routines."""
    style = make_style(rng, arch)
    first, gender = name
    p = Profile(index=index, population=population, name=first, surname=rng.choice(SURNAMES),
                gender=gender, archetype=arch, occupation=rng.choice(arch.occupations),
                hobbies=tuple(rng.sample(arch.hobbies, 2)), age=rng.randint(*arch.ages), style=style,
                voice=Voice(user_key_of(first, f"{population}:{seed}", index), arch.key, style.register),
                prefs=make_prefs(rng, arch),
                routine_share=_clip(rng.gauss(0.66 + 0.2 * arch.style["formality"], 0.03)))
    p.affinity = {d: w * rng.uniform(0.75, 1.25) for d, w in arch.device_affinity.items()}
    p.context = context_weights(rng, arch.context)
    make_routines(rng, p)
    return p


# --- Settings for spontaneous requests ----------------------------------------------------

#: Which parameters a spontaneous request sets, per device (one option drawn per request).
SPONTANEOUS_PARAMS = {
    "ac": (("temperature",), ("temperature", "mode"), ("temperature", "mode"), ("mode",),
           ("mode", "fan_speed")),
    "lights": (("brightness",), ("brightness", "color"), ("color",), ("color", "mode"),
               ("brightness", "mode")),
    "tv": (("input_source",), ("input_source",), ("input_source", "volume"), ("volume",),
           ("volume", "brightness")),
    "speaker": (("volume",), ("volume", "equalizer"), ("equalizer",), ("equalizer",)),
}


def _preferred(rng: random.Random, p: Profile, device: str, meta: dict[str, str]) -> dict[str, Any]:
    """Every parameter of `device` at the value this user would want in this context."""
    prefs = p.prefs
    if device == "ac":
        mode = climate_mode(meta["outdoor_temp"])
        temp = prefs[{"heat": "heat_temp", "cool": "cool_temp", "auto": "auto_temp"}[mode]]
        return {"temperature": temp + rng.randint(-1, 1), "mode": mode, "fan_speed": prefs["fan"]}
    if device == "lights":
        dim = meta["sun_phase"] != "daylight" and meta["time_of_day"] in ("evening", "night")
        level = prefs["bright_low" if dim else "bright_high"] + 5 * rng.randint(-1, 1)
        mode = prefs["light_mode"] if rng.random() < 0.75 else rng.choice(("static", "dynamic"))
        return {"brightness": min(100, max(0, level)), "color": prefs["light_color"], "mode": mode}
    if device == "tv":
        return {"volume": prefs["tv_volume"], "brightness": prefs["tv_brightness"],
                "input_source": prefs["tv_input"]}
    if device == "speaker":
        return {"volume": prefs["speaker_volume"], "equalizer": prefs["eq"]}
    armed = meta["time_of_day"] == "night" or rng.random() < 0.5  # always armed for the night
    return {"armed": armed, "alarm_volume": prefs["alarm_volume"]}


def spontaneous_settings(rng: random.Random, p: Profile, device: str, meta: dict[str, str]) -> dict[str, Any]:
    """Settings of one device that this user would ask for in this context, outside any
    routine: values from the user's preferences, with 1–3 parameters."""
    full = _preferred(rng, p, device, meta)
    if device == "security":
        with_volume = full["armed"] and rng.random() < 0.5
        keep: tuple[str, ...] = ("armed", "alarm_volume") if with_volume else ("armed",)
    else:
        keep = rng.choice(SPONTANEOUS_PARAMS[device])
    return {param: full[param] for param in DEVICES[device] if param in keep}


def pick_device(rng: random.Random, p: Profile, exclude: set[str]) -> Optional[str]:
    """A device for a spontaneous request, by the user's affinity; None if all are taken."""
    pool = {d: w for d, w in p.affinity.items() if d not in exclude}
    return _weighted(rng, pool) if pool else None


def make_profiles(users: int, seed: int, population: str) -> list[Profile]:
    """The population's users: archetypes balanced (shuffled in blocks of one each), first
    names from the population's own pool (shuffled; reused only beyond its size)."""
    rng = random.Random(f"synth:{population}:{seed}")
    names = list(POPULATIONS[population])
    rng.shuffle(names)
    keys = list(ARCHETYPES)
    order: list[str] = []
    while len(order) < users:
        block = keys[:]
        rng.shuffle(block)
        order.extend(block)
    return [make_profile(population, seed, i, ARCHETYPES[order[i]], names[i % len(names)],
                         random.Random(f"synth:{population}:{seed}:persona:{i}"))
            for i in range(users)]
