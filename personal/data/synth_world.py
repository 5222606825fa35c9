"""The simulated world: routine templates and user archetypes.

An archetype (early riser, night owl, …) is a distribution over people: which routine
templates its members tend to have, the ranges of their preferred settings, their style of
speaking and what they do for a living or for fun. `personal.data.synth` draws individuals
from it, so two members of an archetype share structure (routines, devices, tone) but not
values, names or wording.

An archetype is coherent the way a real group of users is: its own routine templates, its
own setting ranges (a retiree's warm rooms and loud TV, a gamer's HDMI input and bass boost),
its own contexts (when its members are at home asking for things, which weather makes them
ask) and its own way of speaking. Individuals vary inside those ranges.

Value specs used in templates (resolved per user in `synth_users.resolve_value`):
- ("int", lo, hi, step): uniform on the grid lo, lo+step, …, hi, shifted by the user's
  offset for that parameter (see `DEFAULT_PREFS`) and kept in the schema;
- ("pref", key, jitter): the user's preference `key` (an int) ± up to `jitter` grid steps;
- ("cpref", key): the user's categorical preference `key` (usually), else another choice;
- ("choice", (a, b, …)): one of the listed values, usually the user's favourite when it is
  listed;
- ("const", value);
- ("climate_mode",) / ("climate_temp", jitter): AC mode and temperature that fit the
  routine's `outdoor_temp` trigger (heat when cold, cool when warm, auto otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Spec = tuple[Any, ...]


@dataclass(frozen=True)
class RoutineTemplate:
    """A kind of routine; one user's routine is an instance with fixed triggers and values."""

    key: str
    activities: tuple[str, ...]  # noun phrases the assistant may mention ("movie night")
    triggers: dict[str, tuple[str, ...]]  # always-set trigger fields -> options
    optional: dict[str, tuple[str, ...]]  # trigger fields set for some users only
    devices: dict[str, dict[str, Spec]]  # device -> param -> value spec
    optional_devices: dict[str, dict[str, Spec]] = field(default_factory=dict)


CLIMATE = {"mode": ("climate_mode",), "temperature": ("climate_temp", 1)}
CLIMATE_FAN = {**CLIMATE, "fan_speed": ("pref", "fan", 1)}

TEMPLATES: dict[str, RoutineTemplate] = {t.key: t for t in [
    RoutineTemplate(
        "wake_up", ("morning routine", "breakfast", "morning coffee"),
        {"time_of_day": ("morning",), "day_of_week": ("weekday",)},
        {"sun_phase": ("before_sunrise", "daylight"), "outdoor_temp": ("very cold", "cold", "mild")},
        {"lights": {"brightness": ("pref", "bright_high", 1), "color": ("cpref", "light_color")},
         "ac": CLIMATE}),
    RoutineTemplate(
        "morning_warmup", ("morning coffee", "breakfast", "early start"),
        {"time_of_day": ("morning",), "outdoor_temp": ("very cold", "cold")},
        {"day_of_week": ("weekday", "weekend"), "weather": ("snowy", "cloudy", "rainy")},
        {"ac": CLIMATE_FAN},
        {"lights": {"brightness": ("pref", "bright_high", 1)}}),
    RoutineTemplate(
        "morning_news", ("morning news", "breakfast", "morning briefing"),
        {"time_of_day": ("morning",)},
        {"day_of_week": ("weekday", "weekend"), "sun_phase": ("daylight",)},
        {"tv": {"input_source": ("cpref", "tv_input"), "volume": ("pref", "tv_volume", 1)}},
        {"ac": CLIMATE}),
    RoutineTemplate(
        "morning_workout", ("workout", "morning run", "training session"),
        {"time_of_day": ("morning",)},
        {"day_of_week": ("weekday", "weekend"), "sun_phase": ("before_sunrise", "daylight"),
         "weather": ("sunny", "cloudy")},
        {"speaker": {"volume": ("int", 55, 85, 5), "equalizer": ("choice", ("bass boost", "bass boost", "balanced"))},
         "lights": {"brightness": ("int", 80, 100, 5), "mode": ("choice", ("dynamic", "static"))}},
        {"ac": {"mode": ("const", "cool"), "temperature": ("pref", "cool_temp", 1), "fan_speed": ("int", 2, 3, 1)}}),
    RoutineTemplate(
        "post_workout", ("recovery stretch", "post-run shower", "stretching session"),
        {"time_of_day": ("afternoon", "evening"), "outdoor_temp": ("warm", "hot")},
        {"weather": ("sunny", "cloudy")},
        {"ac": {"mode": ("climate_mode",), "temperature": ("climate_temp", 1), "fan_speed": ("int", 2, 3, 1)}},
        {"speaker": {"volume": ("int", 30, 50, 5), "equalizer": ("cpref", "eq")}}),
    RoutineTemplate(
        "yoga", ("yoga session", "meditation", "stretching"),
        {"time_of_day": ("morning", "evening")},
        {"day_of_week": ("weekend", "weekday")},
        {"lights": {"brightness": ("int", 25, 50, 5), "color": ("const", "warm"), "mode": ("const", "static")},
         "speaker": {"volume": ("int", 10, 25, 5), "equalizer": ("choice", ("balanced", "treble boost"))}}),
    RoutineTemplate(
        "work_focus", ("work session", "deep work", "project work"),
        {"time_of_day": ("morning", "afternoon"), "day_of_week": ("weekday",)},
        {"sun_phase": ("daylight",), "weather": ("cloudy", "rainy", "sunny")},
        {"lights": {"brightness": ("int", 70, 95, 5), "color": ("choice", ("neutral", "cool")), "mode": ("const", "static")},
         "ac": CLIMATE},
        {"speaker": {"volume": ("int", 10, 25, 5), "equalizer": ("const", "balanced")}}),
    RoutineTemplate(
        "video_calls", ("video call", "team meeting", "client call"),
        {"time_of_day": ("morning", "afternoon"), "day_of_week": ("weekday",)},
        {"weather": ("sunny", "cloudy", "rainy")},
        {"lights": {"brightness": ("int", 80, 100, 5), "color": ("const", "neutral")},
         "ac": {"mode": ("const", "auto"), "fan_speed": ("const", 1)}}),
    RoutineTemplate(
        "hot_day", ("afternoon break", "lunch break", "siesta"),
        {"time_of_day": ("afternoon",), "outdoor_temp": ("hot", "warm")},
        {"weather": ("sunny",), "day_of_week": ("weekday", "weekend")},
        {"ac": {"mode": ("const", "cool"), "temperature": ("pref", "cool_temp", 1), "fan_speed": ("int", 2, 3, 1)}},
        {"lights": {"brightness": ("int", 40, 60, 5)}}),
    RoutineTemplate(
        "dinner_cooking", ("dinner", "cooking", "family dinner"),
        {"time_of_day": ("evening",)},
        {"day_of_week": ("weekday", "weekend"), "sun_phase": ("after_sunset", "daylight")},
        {"lights": {"brightness": ("int", 70, 90, 5), "color": ("choice", ("warm", "neutral"))},
         "speaker": {"volume": ("int", 20, 40, 5), "equalizer": ("cpref", "eq")}},
        {"ac": CLIMATE}),
    RoutineTemplate(
        "reading", ("reading", "evening reading", "quiet evening"),
        {"time_of_day": ("evening", "night"), "sun_phase": ("after_sunset",)},
        {"weather": ("rainy", "cloudy", "snowy"), "outdoor_temp": ("cold", "mild")},
        {"lights": {"brightness": ("int", 40, 60, 5), "color": ("const", "warm"), "mode": ("const", "static")},
         "ac": CLIMATE},
        {"speaker": {"volume": ("int", 10, 20, 5), "equalizer": ("choice", ("balanced", "treble boost"))}}),
    RoutineTemplate(
        "movie_night", ("movie night", "film", "series night"),
        {"time_of_day": ("evening", "night"), "sun_phase": ("after_sunset",)},
        {"day_of_week": ("weekend",), "weather": ("rainy", "cloudy")},
        {"tv": {"input_source": ("cpref", "tv_input"), "volume": ("pref", "tv_volume", 1),
                "brightness": ("pref", "tv_brightness", 1)},
         "lights": {"brightness": ("pref", "bright_low", 1), "color": ("const", "warm")}},
        {"ac": CLIMATE}),
    RoutineTemplate(
        "gaming", ("gaming session", "game night", "raid"),
        {"time_of_day": ("evening", "night")},
        {"day_of_week": ("weekend", "weekday"), "sun_phase": ("after_sunset",)},
        {"tv": {"input_source": ("choice", ("HDMI1", "HDMI2")), "volume": ("int", 40, 70, 5),
                "brightness": ("int", 80, 100, 5)},
         "lights": {"brightness": ("int", 20, 50, 5), "mode": ("const", "dynamic"), "color": ("cpref", "light_color")}},
        {"ac": {"mode": ("const", "cool"), "temperature": ("pref", "cool_temp", 1), "fan_speed": ("pref", "fan", 1)}}),
    RoutineTemplate(
        "late_tv", ("late-night show", "midnight snack", "late-night series"),
        {"time_of_day": ("night",)},
        {"day_of_week": ("weekend", "weekday"), "sun_phase": ("after_sunset", "before_sunrise")},
        {"tv": {"input_source": ("choice", ("YouTube", "Netflix")), "volume": ("int", 10, 25, 5),
                "brightness": ("int", 30, 60, 5)}},
        {"lights": {"brightness": ("int", 10, 20, 5), "color": ("const", "warm")}, "ac": CLIMATE}),
    RoutineTemplate(
        "late_study", ("study session", "late-night coding", "essay"),
        {"time_of_day": ("night",)},
        {"day_of_week": ("weekday",), "weather": ("rainy", "cloudy", "snowy")},
        {"lights": {"brightness": ("int", 60, 85, 5), "color": ("choice", ("cool", "neutral")), "mode": ("const", "static")},
         "ac": CLIMATE_FAN},
        {"speaker": {"volume": ("int", 10, 25, 5), "equalizer": ("const", "balanced")}}),
    RoutineTemplate(
        "bedtime", ("wind-down", "bedtime routine", "evening wind-down"),
        {"time_of_day": ("night",), "sun_phase": ("after_sunset",)},
        {"day_of_week": ("weekday", "weekend"), "outdoor_temp": ("cold", "mild", "warm")},
        {"lights": {"brightness": ("int", 5, 20, 5), "color": ("const", "warm")}, "ac": CLIMATE},
        {"security": {"armed": ("const", True), "alarm_volume": ("pref", "alarm_volume", 1)}}),
    RoutineTemplate(
        "leaving_home", ("commute", "day out", "errands"),
        {"time_of_day": ("morning",), "day_of_week": ("weekday",)},
        {"sun_phase": ("daylight", "before_sunrise"), "weather": ("sunny", "cloudy", "rainy")},
        {"security": {"armed": ("const", True), "alarm_volume": ("pref", "alarm_volume", 1)},
         "ac": {"mode": ("const", "auto"), "fan_speed": ("const", 0)}}),
    RoutineTemplate(
        "coming_home", ("evening at home", "quiet evening at home", "evening"),
        {"time_of_day": ("evening",), "day_of_week": ("weekday",)},
        {"sun_phase": ("after_sunset", "daylight"), "outdoor_temp": ("cold", "mild", "hot")},
        {"security": {"armed": ("const", False)},
         "lights": {"brightness": ("int", 60, 80, 5), "color": ("const", "warm")},
         "ac": CLIMATE}),
    RoutineTemplate(
        "night_security", ("quiet night in", "night in", "evening in"),
        {"time_of_day": ("night",)},
        {"day_of_week": ("weekday", "weekend"), "sun_phase": ("before_sunrise", "after_sunset")},
        {"security": {"armed": ("const", True), "alarm_volume": ("int", 60, 100, 10)}},
        {"lights": {"brightness": ("int", 5, 15, 5)}, "ac": CLIMATE}),
    RoutineTemplate(
        "rainy_cosy", ("rainy afternoon", "cosy afternoon", "lazy afternoon"),
        {"weather": ("rainy", "snowy"), "time_of_day": ("afternoon", "evening")},
        {"day_of_week": ("weekend",), "outdoor_temp": ("cold", "very cold")},
        {"lights": {"brightness": ("int", 40, 60, 5), "color": ("const", "warm")},
         "ac": {"mode": ("const", "heat"), "temperature": ("pref", "heat_temp", 1)}},
        {"speaker": {"volume": ("int", 20, 35, 5), "equalizer": ("const", "balanced")},
         "tv": {"input_source": ("cpref", "tv_input"), "volume": ("pref", "tv_volume", 1)}}),
    RoutineTemplate(
        "music_session", ("listening session", "jam session", "vinyl session"),
        {"time_of_day": ("afternoon", "evening")},
        {"day_of_week": ("weekend",), "weather": ("rainy", "sunny", "cloudy")},
        {"speaker": {"volume": ("pref", "speaker_volume", 1), "equalizer": ("cpref", "eq")},
         "lights": {"brightness": ("int", 30, 60, 5), "mode": ("const", "dynamic")}},
        {"ac": CLIMATE}),
    RoutineTemplate(
        "family_evening", ("family evening", "cartoons", "kids' show"),
        {"time_of_day": ("evening",)},
        {"day_of_week": ("weekday", "weekend"), "sun_phase": ("daylight", "after_sunset")},
        {"tv": {"input_source": ("choice", ("YouTube", "Netflix")), "volume": ("int", 20, 30, 5)},
         "lights": {"brightness": ("int", 50, 70, 5), "color": ("const", "warm")}},
        {"ac": CLIMATE}),
    RoutineTemplate(
        "homework", ("kids' homework", "homework session", "school project"),
        {"time_of_day": ("afternoon",), "day_of_week": ("weekday",)},
        {"weather": ("rainy", "cloudy", "sunny")},
        {"lights": {"brightness": ("int", 80, 95, 5), "color": ("const", "neutral")},
         "ac": CLIMATE}),
    RoutineTemplate(
        "kids_bedtime", ("kids' bedtime", "bedtime story", "story time"),
        {"time_of_day": ("evening",), "sun_phase": ("after_sunset",)},
        {"day_of_week": ("weekday",)},
        {"lights": {"brightness": ("int", 15, 30, 5), "color": ("const", "warm")},
         "speaker": {"volume": ("int", 10, 20, 5), "equalizer": ("const", "balanced")}},
        {"security": {"armed": ("const", True)}, "ac": CLIMATE}),
    RoutineTemplate(
        "afternoon_nap", ("nap", "afternoon rest", "siesta"),
        {"time_of_day": ("afternoon",)},
        {"day_of_week": ("weekday", "weekend"), "weather": ("cloudy", "rainy", "sunny")},
        {"lights": {"brightness": ("int", 10, 25, 5), "color": ("const", "warm")},
         "ac": {"mode": ("climate_mode",), "temperature": ("climate_temp", 1), "fan_speed": ("const", 1)}},
        {"speaker": {"volume": ("int", 5, 15, 5), "equalizer": ("const", "balanced")}}),
    RoutineTemplate(
        "weekend_cleaning", ("cleaning", "chores", "spring cleaning"),
        {"day_of_week": ("weekend",), "time_of_day": ("morning", "afternoon")},
        {"weather": ("sunny", "cloudy")},
        {"speaker": {"volume": ("int", 60, 85, 5), "equalizer": ("choice", ("bass boost", "treble boost"))},
         "lights": {"brightness": ("int", 90, 100, 5)}},
        {"ac": CLIMATE_FAN}),
    RoutineTemplate(
        "sunny_weekend", ("lazy weekend morning", "brunch", "slow Sunday"),
        {"day_of_week": ("weekend",), "time_of_day": ("morning",), "weather": ("sunny",)},
        {"outdoor_temp": ("mild", "warm")},
        {"speaker": {"volume": ("int", 30, 50, 5), "equalizer": ("cpref", "eq")},
         "ac": {"mode": ("climate_mode",), "temperature": ("climate_temp", 1)}}),
    RoutineTemplate(
        "travel_away", ("trip", "weekend away", "journey"),
        {"time_of_day": ("morning", "afternoon")},
        {"day_of_week": ("weekend", "weekday"), "weather": ("sunny", "cloudy", "rainy")},
        {"security": {"armed": ("const", True), "alarm_volume": ("int", 80, 100, 10)},
         "ac": {"mode": ("const", "auto"), "temperature": ("pref", "auto_temp", 1), "fan_speed": ("const", 0)}}),
    RoutineTemplate(
        "match_day", ("match", "big game", "race"),
        {"day_of_week": ("weekend",), "time_of_day": ("afternoon", "evening")},
        {"weather": ("rainy", "cloudy", "sunny")},
        {"tv": {"input_source": ("choice", ("HDMI1", "YouTube", "HDMI2")), "volume": ("pref", "tv_volume", 2)},
         "ac": CLIMATE_FAN},
        {"lights": {"brightness": ("int", 50, 80, 5)}}),
    RoutineTemplate(
        "evening_tv", ("evening news", "quiz show", "evening programme"),
        {"time_of_day": ("evening",)},
        {"day_of_week": ("weekday", "weekend"), "outdoor_temp": ("cold", "very cold", "mild")},
        {"tv": {"input_source": ("choice", ("HDMI1", "AV")), "volume": ("pref", "tv_volume", 1),
                "brightness": ("pref", "tv_brightness", 1)},
         "ac": CLIMATE}),
    RoutineTemplate(
        "study_session", ("study session", "revision", "assignment"),
        {"time_of_day": ("afternoon", "evening"), "day_of_week": ("weekday",)},
        {"weather": ("rainy", "cloudy", "snowy"), "outdoor_temp": ("cold", "very cold", "mild")},
        {"lights": {"brightness": ("int", 75, 90, 5), "color": ("choice", ("neutral", "cool")),
                    "mode": ("const", "static")},
         "ac": CLIMATE},
        {"speaker": {"volume": ("int", 15, 30, 5), "equalizer": ("cpref", "eq")}}),
    RoutineTemplate(
        "house_party", ("house party", "pre-drinks", "friends over"),
        {"day_of_week": ("weekend",), "time_of_day": ("evening", "night")},
        {"sun_phase": ("after_sunset",), "weather": ("sunny", "cloudy", "rainy")},
        {"speaker": {"volume": ("int", 65, 85, 5), "equalizer": ("choice", ("bass boost", "bass boost", "balanced"))},
         "lights": {"brightness": ("int", 40, 60, 5), "mode": ("const", "dynamic"),
                    "color": ("cpref", "light_color")}},
        {"tv": {"input_source": ("choice", ("YouTube", "Netflix")), "volume": ("pref", "tv_volume", 1)}}),
]}


@dataclass(frozen=True)
class Archetype:
    """A kind of user: routine templates (with weights), preference ranges, style priors and
    the contexts in which its members talk to the assistant."""

    key: str
    description: str  # completes "<Name> is ..." after the occupation
    templates: dict[str, int]  # template key -> weight
    occupations: tuple[str, ...]
    hobbies: tuple[str, ...]
    style: dict[str, float]  # prior means of verbosity, formality, warmth (0..1) and the name rate
    prefs: dict[str, Any]  # overrides of DEFAULT_PREFS
    device_affinity: dict[str, float]  # spontaneous requests: weight per device
    ages: tuple[int, int] = (26, 58)
    #: meta field -> value -> multiplier of the population's prior (1 where not given): when
    #: this kind of user is at home asking for things, and which weather makes them ask
    context: dict[str, dict[str, float]] = field(default_factory=dict)


#: Ranges of individual preferences (int: (lo, hi, step); categorical: weights per choice).
#: `light_shift`, `tv_volume`, `tv_brightness`, `speaker_volume`, `alarm_volume` and `fan` also
#: shift the fixed ranges of routine templates by the user's distance from the range's middle
#: (a user who likes a loud TV has every TV routine louder).
DEFAULT_PREFS: dict[str, Any] = {
    "heat_temp": (20, 25, 1), "cool_temp": (18, 23, 1), "auto_temp": (21, 23, 1), "fan": (1, 3, 1),
    "bright_high": (65, 100, 5), "bright_low": (10, 40, 5), "light_shift": (-15, 15, 5),
    "tv_volume": (15, 45, 5), "tv_brightness": (50, 90, 10), "speaker_volume": (25, 70, 5),
    "alarm_volume": (40, 100, 10),
    "light_color": {"warm": 3, "neutral": 2, "cool": 1},
    "light_mode": {"static": 2, "dynamic": 1},
    "eq": {"balanced": 3, "bass boost": 2, "treble boost": 1},
    "tv_input": {"Netflix": 3, "YouTube": 2, "HDMI1": 1, "HDMI2": 1, "AV": 0.3},
}

ARCHETYPES: dict[str, Archetype] = {a.key: a for a in [
    Archetype(
        "early_riser", "an early riser who is up before dawn on most days",
        {"wake_up": 4, "morning_warmup": 3, "morning_news": 3, "leaving_home": 2, "morning_workout": 1,
         "sunny_weekend": 1, "bedtime": 1},
        ("nurse", "baker", "postal worker", "pharmacist", "farmer", "surgeon", "bus driver"),
        ("gardening", "birdwatching", "jogging", "crosswords", "baking bread", "hiking"),
        {"verbosity": 0.55, "formality": 0.6, "warmth": 0.6, "name": 0.09},
        {"heat_temp": (22, 24, 1), "bright_high": (85, 100, 5), "light_shift": (5, 15, 5),
         "tv_volume": (20, 35, 5), "light_color": {"cool": 3, "neutral": 2, "warm": 0.5},
         "light_mode": {"static": 4, "dynamic": 0.5},
         "tv_input": {"HDMI1": 1, "Netflix": 1, "YouTube": 3, "AV": 0.3, "HDMI2": 0.3}},
        {"ac": 6, "lights": 7, "tv": 5, "speaker": 0.5, "security": 1.5},
        context={"time_of_day": {"morning": 3.2, "afternoon": 0.4, "evening": 0.5, "night": 0.3},
                 "day_of_week": {"weekday": 1.6}, "sun_phase": {"before_sunrise": 3},
                 "outdoor_temp": {"very cold": 1.8, "cold": 1.5, "hot": 0.5}, "weather": {"snowy": 1.5}}),
    Archetype(
        "night_owl", "a night owl who does their best thinking after midnight",
        {"late_tv": 4, "movie_night": 3, "night_security": 2, "late_study": 2, "reading": 1, "music_session": 1},
        ("software developer", "bartender", "graphic designer", "novelist", "DJ", "night-shift security guard"),
        ("astronomy", "podcasts", "indie films", "sketching", "synthesizers", "mystery novels"),
        {"verbosity": 0.3, "formality": 0.35, "warmth": 0.3, "name": 0.03},
        {"bright_low": (10, 20, 5), "bright_high": (60, 75, 5), "light_shift": (-15, -10, 5),
         "tv_volume": (10, 25, 5), "tv_brightness": (40, 60, 10), "speaker_volume": (20, 35, 5),
         "alarm_volume": (80, 100, 10), "light_color": {"warm": 4, "neutral": 1, "cool": 0.5},
         "eq": {"treble boost": 3, "balanced": 2, "bass boost": 0.5},
         "tv_input": {"Netflix": 4, "YouTube": 2, "HDMI1": 0.3, "HDMI2": 0.3, "AV": 0.1}},
        {"ac": 4.5, "lights": 6, "tv": 7.5, "speaker": 1.5, "security": 2.5},
        context={"time_of_day": {"morning": 0.15, "afternoon": 0.4, "evening": 1.0, "night": 4.0},
                 "day_of_week": {"weekend": 1.5}, "sun_phase": {"before_sunrise": 2.5},
                 "weather": {"rainy": 1.5, "sunny": 0.7}, "outdoor_temp": {"mild": 1.4}}),
    Archetype(
        "busy_parent", "a busy parent juggling work, school runs and two young kids",
        {"family_evening": 4, "kids_bedtime": 3, "dinner_cooking": 3, "homework": 2, "coming_home": 1, "wake_up": 1},
        ("accountant", "teacher", "project manager", "dental hygienist", "sales manager", "paramedic"),
        ("cooking", "weekend football", "board games", "swimming with the kids", "gardening"),
        {"verbosity": 0.4, "formality": 0.5, "warmth": 0.7, "name": 0.1},
        {"tv_volume": (20, 30, 5), "speaker_volume": (25, 40, 5), "alarm_volume": (40, 60, 10),
         "light_shift": (0, 10, 5), "eq": {"balanced": 5, "treble boost": 1, "bass boost": 0.3},
         "light_color": {"warm": 4, "neutral": 2, "cool": 0.3},
         "tv_input": {"YouTube": 4, "Netflix": 3, "HDMI1": 0.3, "HDMI2": 0.3, "AV": 0.1}},
        {"ac": 5.5, "lights": 6.5, "tv": 7, "speaker": 1, "security": 2},
        context={"time_of_day": {"morning": 0.9, "afternoon": 1.0, "evening": 2.0, "night": 0.2},
                 "day_of_week": {"weekday": 1.4}, "sun_phase": {"after_sunset": 1.5},
                 "weather": {"rainy": 1.4}}),
    Archetype(
        "retiree", "retired and enjoying a slower pace of life at home",
        {"morning_news": 3, "afternoon_nap": 3, "evening_tv": 4, "rainy_cosy": 2, "morning_warmup": 2,
         "reading": 1, "bedtime": 1},
        ("retired teacher", "retired engineer", "retired librarian", "retired shopkeeper", "retired civil servant"),
        ("knitting", "bridge", "gardening", "classical music", "local history", "watercolour painting"),
        {"verbosity": 0.85, "formality": 0.85, "warmth": 0.85, "name": 0.16},
        {"heat_temp": (24, 26, 1), "cool_temp": (22, 24, 1), "auto_temp": (22, 23, 1), "fan": (1, 1, 1),
         "tv_volume": (40, 55, 5), "tv_brightness": (70, 90, 10), "alarm_volume": (80, 100, 10),
         "bright_high": (70, 85, 5), "tv_input": {"HDMI1": 3, "AV": 3, "Netflix": 0.3, "YouTube": 0.3, "HDMI2": 0.3},
         "light_color": {"warm": 5, "neutral": 1, "cool": 0.2},
         "eq": {"balanced": 3, "treble boost": 2, "bass boost": 0.2}},
        {"ac": 7.5, "lights": 5, "tv": 7.5, "speaker": 0.5, "security": 2}, (64, 84),
        context={"time_of_day": {"morning": 1.2, "afternoon": 2.2, "evening": 1.0, "night": 0.25},
                 "outdoor_temp": {"very cold": 2.2, "cold": 1.7, "warm": 0.6, "hot": 0.4},
                 "weather": {"rainy": 1.5, "snowy": 1.5, "sunny": 0.6}}),
    Archetype(
        "remote_worker", "working from a home office most days",
        {"work_focus": 4, "video_calls": 4, "hot_day": 2, "yoga": 1, "dinner_cooking": 1, "morning_news": 1},
        ("data analyst", "translator", "UX researcher", "copywriter", "software engineer", "consultant"),
        ("cycling", "chess", "specialty coffee", "language learning", "climbing"),
        {"verbosity": 0.45, "formality": 0.7, "warmth": 0.4, "name": 0.04},
        {"light_color": {"neutral": 4, "cool": 2, "warm": 0.5}, "bright_high": (80, 95, 5), "light_shift": (5, 10, 5),
         "cool_temp": (21, 23, 1), "auto_temp": (21, 22, 1), "speaker_volume": (15, 30, 5),
         "light_mode": {"static": 5, "dynamic": 0.3}, "eq": {"balanced": 4, "treble boost": 1, "bass boost": 0.5}},
        {"ac": 7.5, "lights": 7, "tv": 3, "speaker": 1.5, "security": 0.5},
        context={"time_of_day": {"morning": 1.4, "afternoon": 2.4, "evening": 0.4, "night": 0.2},
                 "day_of_week": {"weekday": 1.8}, "sun_phase": {"daylight": 2},
                 "outdoor_temp": {"warm": 1.6, "hot": 1.8, "very cold": 0.7}, "weather": {"sunny": 1.3}}),
    Archetype(
        "gamer", "a keen gamer who streams a few nights a week",
        {"gaming": 6, "late_tv": 1, "movie_night": 1, "hot_day": 1, "night_security": 1, "house_party": 1},
        ("game tester", "IT support technician", "streamer", "warehouse worker", "computer science student"),
        ("competitive shooters", "RPGs", "anime", "mechanical keyboards", "speedrunning"),
        {"verbosity": 0.25, "formality": 0.1, "warmth": 0.4, "name": 0.03},
        {"tv_volume": (45, 65, 5), "tv_brightness": (80, 90, 10), "speaker_volume": (60, 80, 5),
         "cool_temp": (18, 20, 1), "fan": (3, 3, 1), "light_shift": (-10, 0, 5),
         "eq": {"bass boost": 6, "balanced": 0.5, "treble boost": 0.3},
         "tv_input": {"HDMI1": 3, "HDMI2": 3, "YouTube": 0.5, "Netflix": 0.3, "AV": 0.1},
         "light_color": {"cool": 4, "neutral": 1, "warm": 0.5}, "light_mode": {"dynamic": 5, "static": 0.5}},
        {"ac": 5, "lights": 4.5, "tv": 9, "speaker": 2.5, "security": 0.5}, (18, 36),
        context={"time_of_day": {"morning": 0.15, "afternoon": 0.8, "evening": 1.8, "night": 3.0},
                 "day_of_week": {"weekend": 1.7}, "sun_phase": {"after_sunset": 1.5},
                 "outdoor_temp": {"warm": 1.4, "hot": 1.8}, "weather": {"rainy": 1.3}}),
    Archetype(
        "fitness_enthusiast", "a fitness enthusiast who trains almost every day",
        {"morning_workout": 5, "post_workout": 3, "yoga": 2, "sunny_weekend": 2, "weekend_cleaning": 1, "wake_up": 1},
        ("personal trainer", "physiotherapist", "firefighter", "nutritionist", "sports coach"),
        ("trail running", "CrossFit", "cycling", "meal prepping", "rock climbing", "swimming"),
        {"verbosity": 0.5, "formality": 0.3, "warmth": 0.8, "name": 0.08},
        {"cool_temp": (17, 19, 1), "heat_temp": (19, 21, 1), "fan": (2, 3, 1), "speaker_volume": (60, 80, 5),
         "light_shift": (10, 15, 5), "bright_high": (90, 100, 5),
         "eq": {"bass boost": 5, "balanced": 1, "treble boost": 0.5}, "light_mode": {"dynamic": 3, "static": 1}},
        {"ac": 6.5, "lights": 5, "tv": 2.5, "speaker": 3, "security": 0.5},
        context={"time_of_day": {"morning": 2.0, "afternoon": 1.6, "evening": 0.6, "night": 0.15},
                 "day_of_week": {"weekend": 1.3}, "sun_phase": {"daylight": 1.5},
                 "outdoor_temp": {"warm": 1.8, "hot": 1.8, "very cold": 0.4, "cold": 0.6},
                 "weather": {"sunny": 2.0, "snowy": 0.4}}),
    Archetype(
        "student", "a university student sharing a small flat",
        {"study_session": 5, "house_party": 2, "late_study": 2, "music_session": 1, "weekend_cleaning": 1,
         "late_tv": 1},
        ("biology student", "law student", "music student", "engineering student", "history student"),
        ("indie music", "video games", "thrifting", "skateboarding", "film photography", "memes"),
        {"verbosity": 0.35, "formality": 0.15, "warmth": 0.55, "name": 0.04},
        {"heat_temp": (19, 21, 1), "cool_temp": (21, 23, 1), "fan": (1, 1, 1), "speaker_volume": (45, 70, 5),
         "light_shift": (0, 10, 5), "tv_volume": (25, 40, 5),
         "light_color": {"neutral": 3, "cool": 2, "warm": 1},
         "eq": {"treble boost": 2, "bass boost": 2, "balanced": 1},
         "tv_input": {"YouTube": 5, "Netflix": 2, "HDMI1": 0.3, "HDMI2": 0.3, "AV": 0.1}},
        {"ac": 5, "lights": 6, "tv": 4.5, "speaker": 2, "security": 0.3}, (18, 25),
        context={"time_of_day": {"morning": 0.35, "afternoon": 2.0, "evening": 1.0, "night": 1.5},
                 "day_of_week": {"weekday": 1.3}, "outdoor_temp": {"cold": 1.4, "very cold": 1.3},
                 "weather": {"rainy": 1.4, "cloudy": 1.2}}),
    Archetype(
        "music_lover", "someone for whom music is always playing somewhere in the house",
        {"music_session": 5, "dinner_cooking": 3, "rainy_cosy": 2, "reading": 2, "weekend_cleaning": 1,
         "house_party": 1},
        ("sound engineer", "piano teacher", "record shop owner", "radio producer", "architect"),
        ("vinyl collecting", "jazz", "playing the guitar", "concerts", "choir singing"),
        {"verbosity": 0.65, "formality": 0.45, "warmth": 0.7, "name": 0.07},
        {"speaker_volume": (40, 60, 5), "eq": {"treble boost": 4, "balanced": 2, "bass boost": 0.5},
         "light_color": {"warm": 4, "neutral": 1, "cool": 0.5}, "light_mode": {"dynamic": 3, "static": 1},
         "light_shift": (-10, 0, 5), "tv_input": {"YouTube": 3, "Netflix": 2, "AV": 1, "HDMI1": 0.3, "HDMI2": 0.3}},
        {"ac": 5, "lights": 5, "tv": 2.5, "speaker": 4, "security": 0.5},
        context={"time_of_day": {"morning": 0.5, "afternoon": 1.5, "evening": 1.8, "night": 0.6},
                 "day_of_week": {"weekend": 2.0}, "weather": {"rainy": 2.0, "cloudy": 1.3, "sunny": 0.6}}),
    Archetype(
        "frequent_traveller", "often away on business and careful about the house while gone",
        {"leaving_home": 4, "coming_home": 4, "travel_away": 3, "night_security": 1, "evening_tv": 1,
         "morning_warmup": 1},
        ("sales consultant", "airline pilot", "journalist", "management consultant", "engineer on site visits"),
        ("photography", "wine tasting", "running", "travel writing", "podcasts"),
        {"verbosity": 0.3, "formality": 0.75, "warmth": 0.3, "name": 0.05},
        {"alarm_volume": (90, 100, 10), "auto_temp": (21, 22, 1), "fan": (1, 2, 1), "light_shift": (-5, 5, 5),
         "tv_input": {"HDMI1": 3, "Netflix": 2, "AV": 1, "YouTube": 0.5, "HDMI2": 0.5}},
        {"ac": 6, "lights": 5.5, "tv": 3.5, "speaker": 0.5, "security": 5.5},
        context={"time_of_day": {"morning": 1.8, "afternoon": 0.6, "evening": 1.3, "night": 0.5},
                 "day_of_week": {"weekday": 1.6},
                 "outdoor_temp": {"very cold": 1.6, "hot": 1.6, "mild": 0.5}}),
]}

#: Adjectives for the way a user speaks, by trait level (low, high).
SPEECH_DESCRIPTIONS = {
    "formality": ("casually, in short relaxed phrases", "politely and rather formally"),
    "verbosity": ("and gets straight to the point", "and likes to explain what is going on"),
    "warmth": ("with a dry, matter-of-fact tone", "with a warm, cheerful tone"),
}
