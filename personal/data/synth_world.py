"""The simulated world: routine templates and user archetypes.

An archetype (early riser, night owl, …) is a distribution over people: which routine
templates its members tend to have, the ranges of their preferred settings, their style of
speaking and what they do for a living or for fun. `personal.data.synth` draws individuals
from it, so two members of an archetype share structure (routines, devices, tone) but not
values, names or wording.

Value specs used in templates (resolved per user in `synth.resolve_value`):
- ("int", lo, hi, step): uniform on the grid lo, lo+step, …, hi;
- ("pref", key, jitter): the user's preference `key` (an int) ± up to `jitter` grid steps;
- ("cpref", key): the user's categorical preference `key` (usually), else another choice;
- ("choice", (a, b, …)): one of the listed values;
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
]}


@dataclass(frozen=True)
class Archetype:
    """A kind of user: routine templates (with weights), preference ranges, style priors."""

    key: str
    description: str  # completes "<Name> is ..." after the occupation
    templates: dict[str, int]  # template key -> weight
    occupations: tuple[str, ...]
    hobbies: tuple[str, ...]
    style: dict[str, float]  # prior means of the style traits (0..1), see synth.Style
    prefs: dict[str, Any]  # overrides of DEFAULT_PREFS
    device_affinity: dict[str, float]  # spontaneous requests: weight per device
    ages: tuple[int, int] = (26, 58)


#: Ranges of individual preferences (int: (lo, hi, step); categorical: weights per choice).
DEFAULT_PREFS: dict[str, Any] = {
    "heat_temp": (20, 25, 1), "cool_temp": (18, 23, 1), "auto_temp": (21, 23, 1), "fan": (1, 3, 1),
    "bright_high": (65, 100, 5), "bright_low": (10, 40, 5), "tv_volume": (15, 45, 5),
    "tv_brightness": (50, 90, 10), "speaker_volume": (25, 70, 5), "alarm_volume": (40, 100, 10),
    "light_color": {"warm": 3, "neutral": 2, "cool": 1},
    "eq": {"balanced": 3, "bass boost": 2, "treble boost": 1},
    "tv_input": {"Netflix": 3, "YouTube": 2, "HDMI1": 1, "HDMI2": 1, "AV": 0.3},
}

ARCHETYPES: dict[str, Archetype] = {a.key: a for a in [
    Archetype(
        "early_riser", "an early riser who is up before dawn on most days",
        {"wake_up": 3, "morning_warmup": 3, "morning_news": 2, "morning_workout": 1,
         "leaving_home": 2, "reading": 1, "bedtime": 2, "sunny_weekend": 1},
        ("nurse", "baker", "postal worker", "pharmacist", "farmer", "surgeon", "bus driver"),
        ("gardening", "birdwatching", "jogging", "crosswords", "baking bread", "hiking"),
        {"verbosity": 0.55, "formality": 0.6, "warmth": 0.6, "name": 0.3},
        {"heat_temp": (21, 24, 1), "bright_high": (75, 100, 5), "light_color": {"cool": 3, "neutral": 2, "warm": 1}},
        {"ac": 5.2, "lights": 5.6, "tv": 3.9, "speaker": 1, "security": 1.1}),
    Archetype(
        "night_owl", "a night owl who does their best thinking after midnight",
        {"late_study": 3, "late_tv": 3, "movie_night": 2, "gaming": 1, "music_session": 2,
         "night_security": 1, "reading": 1, "hot_day": 1},
        ("software developer", "bartender", "graphic designer", "novelist", "DJ", "night-shift security guard"),
        ("astronomy", "podcasts", "indie films", "sketching", "synthesizers", "mystery novels"),
        {"verbosity": 0.35, "formality": 0.3, "warmth": 0.4, "name": 0.15},
        {"bright_low": (10, 30, 5), "tv_volume": (10, 30, 5), "light_color": {"warm": 2, "cool": 2, "neutral": 1}},
        {"ac": 3.9, "lights": 5.6, "tv": 5.5, "speaker": 2, "security": 1.1}),
    Archetype(
        "busy_parent", "a busy parent juggling work, school runs and two young kids",
        {"wake_up": 2, "family_evening": 3, "dinner_cooking": 3, "homework": 2, "kids_bedtime": 3,
         "leaving_home": 1, "coming_home": 2, "match_day": 1},
        ("accountant", "teacher", "project manager", "dental hygienist", "sales manager", "paramedic"),
        ("cooking", "weekend football", "board games", "swimming with the kids", "gardening"),
        {"verbosity": 0.4, "formality": 0.5, "warmth": 0.65, "name": 0.35},
        {"tv_input": {"YouTube": 3, "Netflix": 3, "HDMI1": 0.5, "HDMI2": 0.5, "AV": 0.2}},
        {"ac": 5.2, "lights": 5.6, "tv": 5.5, "speaker": 1, "security": 1.7}),
    Archetype(
        "retiree", "retired and enjoying a slower pace of life at home",
        {"morning_news": 3, "afternoon_nap": 3, "reading": 2, "evening_tv": 3, "bedtime": 2,
         "rainy_cosy": 2, "morning_warmup": 2, "hot_day": 1, "match_day": 1},
        ("retired teacher", "retired engineer", "retired librarian", "retired shopkeeper", "retired civil servant"),
        ("knitting", "bridge", "gardening", "classical music", "local history", "watercolour painting"),
        {"verbosity": 0.8, "formality": 0.85, "warmth": 0.85, "name": 0.45},
        {"heat_temp": (22, 25, 1), "cool_temp": (21, 24, 1), "tv_volume": (30, 55, 5),
         "alarm_volume": (70, 100, 10), "tv_input": {"HDMI1": 3, "AV": 2, "Netflix": 1, "YouTube": 1, "HDMI2": 0.5},
         "light_color": {"warm": 4, "neutral": 1, "cool": 0.3}},
        {"ac": 6.5, "lights": 4.2, "tv": 5.5, "speaker": 1, "security": 1.7}, (64, 84)),
    Archetype(
        "remote_worker", "working from a home office most days",
        {"work_focus": 3, "video_calls": 3, "hot_day": 2, "morning_warmup": 2, "dinner_cooking": 1,
         "movie_night": 1, "yoga": 1},
        ("data analyst", "translator", "UX researcher", "copywriter", "software engineer", "consultant"),
        ("cycling", "chess", "specialty coffee", "language learning", "climbing"),
        {"verbosity": 0.45, "formality": 0.65, "warmth": 0.45, "name": 0.2},
        {"light_color": {"neutral": 3, "cool": 2, "warm": 1}, "bright_high": (70, 100, 5)},
        {"ac": 6.5, "lights": 5.6, "tv": 2.2, "speaker": 2, "security": 0.6}),
    Archetype(
        "gamer", "a keen gamer who streams a few nights a week",
        {"gaming": 4, "late_tv": 2, "movie_night": 2, "music_session": 1, "hot_day": 2,
         "late_study": 1, "night_security": 1},
        ("game tester", "IT support technician", "streamer", "warehouse worker", "computer science student"),
        ("competitive shooters", "RPGs", "anime", "mechanical keyboards", "speedrunning"),
        {"verbosity": 0.3, "formality": 0.1, "warmth": 0.45, "name": 0.1},
        {"tv_volume": (35, 60, 5), "speaker_volume": (50, 80, 5), "cool_temp": (18, 21, 1),
         "eq": {"bass boost": 4, "balanced": 1, "treble boost": 0.5},
         "tv_input": {"HDMI1": 3, "HDMI2": 3, "YouTube": 1, "Netflix": 1, "AV": 0.2},
         "light_color": {"cool": 3, "neutral": 1, "warm": 1}},
        {"ac": 3.9, "lights": 4.2, "tv": 7.1, "speaker": 3, "security": 0.6}, (18, 36)),
    Archetype(
        "fitness_enthusiast", "a fitness enthusiast who trains almost every day",
        {"morning_workout": 4, "post_workout": 3, "yoga": 2, "wake_up": 2, "weekend_cleaning": 1,
         "bedtime": 1, "hot_day": 1, "match_day": 2},
        ("personal trainer", "physiotherapist", "firefighter", "nutritionist", "sports coach"),
        ("trail running", "CrossFit", "cycling", "meal prepping", "rock climbing", "swimming"),
        {"verbosity": 0.5, "formality": 0.35, "warmth": 0.75, "name": 0.3},
        {"cool_temp": (17, 20, 1), "speaker_volume": (50, 85, 5),
         "eq": {"bass boost": 4, "balanced": 1, "treble boost": 1}},
        {"ac": 6.5, "lights": 4.2, "tv": 2.2, "speaker": 3, "security": 0.6}),
    Archetype(
        "student", "a university student sharing a small flat",
        {"late_study": 3, "gaming": 2, "music_session": 2, "rainy_cosy": 1, "late_tv": 2,
         "weekend_cleaning": 1, "hot_day": 1},
        ("biology student", "law student", "music student", "engineering student", "history student"),
        ("indie music", "video games", "thrifting", "skateboarding", "film photography", "memes"),
        {"verbosity": 0.35, "formality": 0.15, "warmth": 0.5, "name": 0.15},
        {"heat_temp": (19, 22, 1), "speaker_volume": (45, 80, 5),
         "tv_input": {"YouTube": 4, "Netflix": 3, "HDMI1": 1, "HDMI2": 1, "AV": 0.2}},
        {"ac": 3.9, "lights": 4.2, "tv": 5.5, "speaker": 3, "security": 0.3}, (18, 25)),
    Archetype(
        "music_lover", "someone for whom music is always playing somewhere in the house",
        {"music_session": 4, "reading": 2, "dinner_cooking": 2, "weekend_cleaning": 2,
         "rainy_cosy": 2, "movie_night": 1},
        ("sound engineer", "piano teacher", "record shop owner", "radio producer", "architect"),
        ("vinyl collecting", "jazz", "playing the guitar", "concerts", "choir singing"),
        {"verbosity": 0.6, "formality": 0.4, "warmth": 0.7, "name": 0.25},
        {"speaker_volume": (35, 75, 5), "eq": {"balanced": 2, "treble boost": 2, "bass boost": 2},
         "light_color": {"warm": 3, "neutral": 1, "cool": 1}},
        {"ac": 3.9, "lights": 4.2, "tv": 2.2, "speaker": 5, "security": 0.6}),
    Archetype(
        "frequent_traveller", "often away on business and careful about the house while gone",
        {"leaving_home": 3, "coming_home": 3, "travel_away": 2, "night_security": 1,
         "morning_warmup": 2, "hot_day": 2, "bedtime": 1, "evening_tv": 1},
        ("sales consultant", "airline pilot", "journalist", "management consultant", "engineer on site visits"),
        ("photography", "wine tasting", "running", "travel writing", "podcasts"),
        {"verbosity": 0.4, "formality": 0.7, "warmth": 0.4, "name": 0.2},
        {"alarm_volume": (70, 100, 10), "auto_temp": (20, 23, 1)},
        {"ac": 5.2, "lights": 4.2, "tv": 2.2, "speaker": 1, "security": 3.4}),
]}

#: Adjectives for the way a user speaks, by trait level (low, high).
SPEECH_DESCRIPTIONS = {
    "formality": ("casually, in short relaxed phrases", "politely and rather formally"),
    "verbosity": ("and gets straight to the point", "and likes to explain what is going on"),
    "warmth": ("with a dry, matter-of-fact tone", "with a warm, cheerful tone"),
}
