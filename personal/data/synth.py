"""User simulator: a population of smart-home users and their dialogues in the canonical layout.

Nobody here can download EdgeWisePersona, so every experiment on this machine runs on this
stand-in; its numbers are tuned to "Real data in numbers" in DATA.md (words per turn,
question / number / name rates, device shares). Pipeline per persona:

1. draw an archetype (balanced over the population) and an individual from it: name,
   character sketch, style traits, preferred values (inside the archetype's setting ranges),
   a context prior (the archetype's times of day, days and weather, jittered per person),
   a `Voice` over the phrase banks;
2. instantiate 3–6 routines: the archetype's signature template, more of its templates and
   now and then one from another archetype (triggers over the five context fields, drawn by
   the user's context prior; settings within the schema ranges, shifted by the user's
   preferences);
3. per session: ~75% routine-driven (context matches the routine's triggers, free fields
   from the user's context prior; the user asks for some of its settings, exactly or only as
   a wish), the rest spontaneous (a context of the user's prior matching no routine,
   settings from the user's general taste); plan 2–7 assistant turns (more for talkative
   users, `synth_session`), then word them (`synth_render`).

Archetypes are a real structure, as user groups are: on the default data the silhouette of
`features.user_features` grouped by archetype is about 0.18 (shuffled labels: -0.05), while
individuals stay identifiable (TF-IDF + logistic regression names the user of a test turn
about 50 times more often than chance).

Determinism: every random draw comes from a `random.Random` seeded by a string naming the
population, seed and persona, so the same arguments give the same bytes and a persona does
not depend on how many others are generated. `alt_text` comes from its own stream, so
re-phrasings never shift the main text.

Disjoint populations: `eval` and `background` draw first names from disjoint pools
(`synth_names`, checked at import) and use different seed streams, so no background persona
shares a name — nor, in practice, routines — with an evaluated one; the world (archetypes,
templates, phrase banks) is the same.

Modules: `synth_world` (archetypes, routine templates), `synth_names`, `synth_users`
(contexts, styles, preferences, routines), `synth_session` (dialogue plans),
`synth_render` (wording), `synth_phrases` (phrase banks and the phrasing conventions that
an action parser relies on).

Measured on the default 200 × 50 (seed 0), by `personal data stats`: user turns 15.3 words,
assistant 14.2; on DATA.md's sample shape (middle session, first 5 messages) assistant turns
have 15.9 words, 72% ask a question, 57% contain a number, 8% address the user by name,
devices mentioned AC 41%, lights 36%, TV 21%, speaker 6%, security 5%; reply baseline 0.764,
identifiability 26x chance, archetype silhouette 0.181; about 5 s of CPU.
"""
from __future__ import annotations

import random
from pathlib import Path

from personal.data.io import write_dataset
from personal.data.schema import Dataset, Persona, persona_id_for_line
from personal.data.synth_session import make_sessions
from personal.data.synth_users import POPULATIONS, character_sketch, make_profiles
from personal.errors import PersonalError

# --- Public API -------------------------------------------------------------------------------


def _check_args(users: int, sessions: int, seed: int, population: str) -> None:
    if population not in POPULATIONS:
        raise PersonalError(f"population must be one of {', '.join(POPULATIONS)}, got {population!r}")
    for arg, value in (("users", users), ("sessions", sessions)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PersonalError(f"{arg} must be a positive integer, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise PersonalError(f"seed must be an integer, got {seed!r}")


def synthesize(users: int = 200, sessions: int = 50, seed: int = 0, population: str = "eval") -> Dataset:
    """Simulate `users` personas × `sessions` dialogues (deterministic per arguments).

    `population="background"` gives a disjoint population (other names, other draws) of the
    same world, for pretraining the built-in base model.
    """
    _check_args(users, sessions, seed, population)
    personas = []
    for p in make_profiles(users, seed, population):
        rng = random.Random(f"synth:{population}:{seed}:sessions:{p.index}")
        alt_rng = random.Random(f"synth:{population}:{seed}:alt:{p.index}")
        personas.append(Persona(
            persona_id=persona_id_for_line(p.index), character=character_sketch(p),
            routines=p.routines, sessions=make_sessions(rng, alt_rng, p, sessions),
            archetype=p.archetype.key, name=p.name))
    return Dataset(personas)


def write_synth(out_dir: str | Path, users: int = 200, sessions: int = 50, seed: int = 0,
                population: str = "eval") -> Dataset:
    """`synthesize` and write the result as the canonical layout into `out_dir`."""
    ds = synthesize(users=users, sessions=sessions, seed=seed, population=population)
    write_dataset(ds, out_dir)
    return ds
