"""Shared fixtures: small hand-made datasets built in memory (no simulator, no files).

- `tiny_dataset`: 3 personas × 5 sessions with names, archetypes, routines, gold actions and
  alt_text on most assistant turns; persona_001's session 2 has no meta (unknown context) and
  persona_002's session 4 is "real-like" (no actions, no alt_text, no applied_routines).
- `make_styled_dataset(users_per_archetype, sessions)`: a factory of personas from two
  clearly different archetypes (a formal, warm AC-and-lights user in the morning vs a casual,
  terse TV-and-speaker user at night), each user with its own signature phrase — for tests
  where users must be identifiable and archetypes must cluster.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile

import numpy as np
import pytest

from personal.data.schema import Dataset, Message, Persona, Routine, Session

MORNING = {"time_of_day": "morning", "day_of_week": "weekday", "sun_phase": "daylight",
           "weather": "sunny", "outdoor_temp": "cold"}
NIGHT = {"time_of_day": "night", "day_of_week": "weekend", "sun_phase": "after_sunset",
         "weather": "rainy", "outdoor_temp": "mild"}


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models gain nothing from more threads, and lose a lot on a shared 2-core CPU;
    one thread also keeps CPU results bit-for-bit repeatable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fixed_seeds():
    random.seed(0)
    np.random.seed(0)


def _tiny_session(pid: int, sid: int) -> Session:
    temp = 20 + pid + sid % 3
    msgs = [
        Message("user", f"Good morning, could you warm the room to {temp} degrees please?"),
        Message("assistant", f"I've set the AC to {temp} degrees on heat. Anything else?",
                actions={"ac": {"temperature": temp, "mode": "heat"}},
                alt_text=f"The AC is now heating to {temp} degrees. Need anything more?"),
        Message("user", "Yes, the lights at 60 with a warm colour."),
        Message("assistant", "Lights are at 60 percent, warm colour. Enjoy your coffee!",
                actions={"lights": {"brightness": 60, "color": "warm"}},
                alt_text="Warm lights at 60 percent are on. Enjoy the coffee!"),
    ]
    if sid % 2 == 1:  # odd sessions are longer: 3 assistant turns
        msgs += [Message("user", "And some music on the speaker, volume 20."),
                 Message("assistant", "Speaker volume is 20 with a balanced sound.",
                         actions={"speaker": {"volume": 20, "equalizer": "balanced"}},
                         alt_text="Music is playing at volume 20, balanced.")]
    return Session(session_id=sid, meta=dict(MORNING if pid != 1 else NIGHT), messages=msgs,
                   applied_routines=[0] if sid % 2 == 0 else [])


@pytest.fixture
def tiny_dataset() -> Dataset:
    """3 personas × 5 sessions (see the module docstring)."""
    personas = []
    for pid, (name, arch) in enumerate([("Ann", "early_riser"), ("Bob", "night_owl"),
                                        ("Cleo", "early_riser")]):
        sessions = [_tiny_session(pid, sid) for sid in range(5)]
        personas.append(Persona(
            persona_id=f"persona_{pid:03d}", character=f"{name} is a teacher who likes tea.",
            routines=[Routine(triggers={"time_of_day": "morning"},
                              actions={"ac": {"temperature": 21, "mode": "heat"}})],
            sessions=sessions, archetype=arch, name=name))
    personas[1].sessions[2].meta = None
    personas[2].sessions[4] = Session(session_id=4, meta=dict(MORNING), messages=[
        Message("user", "hey turn on the tv"),
        Message("assistant", "Sure, the TV is on. Want Netflix?")])
    return Dataset(personas)


def _styled_session(user: int, archetype: int, sid: int) -> Session:
    sign = f"signature{user}"  # a word only this user's assistant turns use
    if archetype == 0:
        t = 19 + (sid + user) % 4
        msgs = [Message("user", f"Good morning, could you please set the heating to {t} degrees? Thank you."),
                Message("assistant", f"Of course, it is a lovely morning. The AC is heating to {t} degrees, "
                                     f"{sign}. Would you like the lights on as well?",
                        actions={"ac": {"temperature": t, "mode": "heat"}},
                        alt_text=f"Certainly {sign}, heating the room to {t} degrees now."),
                Message("user", "Yes please, warm lights at 70 would be wonderful."),
                Message("assistant", f"Lovely, warm lights are at 70 percent. Enjoy your breakfast, {sign}!",
                        actions={"lights": {"brightness": 70, "color": "warm"}},
                        alt_text=f"The warm lights are now at 70 percent, {sign}. Have a nice breakfast!")]
        meta = MORNING
    else:
        v = 40 + (sid + user) % 5 * 5
        msgs = [Message("user", f"yo tv on netflix, volume {v}"),
                Message("assistant", f"tv on netflix at {v} {sign}",
                        actions={"tv": {"input_source": "Netflix", "volume": v}},
                        alt_text=f"netflix running, volume {v} {sign}"),
                Message("user", "speaker bass boost too"),
                Message("assistant", f"speaker on bass boost {sign}",
                        actions={"speaker": {"equalizer": "bass boost"}},
                        alt_text=f"bass boost on the speaker {sign}")]
        meta = NIGHT
    return Session(session_id=sid, meta=dict(meta), messages=msgs, applied_routines=[0])


@pytest.fixture
def make_styled_dataset():
    """Factory: `make_styled_dataset(users_per_archetype=3, sessions=10) -> Dataset`."""
    def make(users_per_archetype: int = 3, sessions: int = 10) -> Dataset:
        personas = []
        for a, arch in enumerate(("early_riser", "night_owl")):
            for k in range(users_per_archetype):
                u = a * users_per_archetype + k
                personas.append(Persona(
                    persona_id=f"persona_{u:03d}", character=None, routines=[],
                    sessions=[_styled_session(u, a, s) for s in range(sessions)],
                    archetype=arch, name=None))
        return Dataset(personas)
    return make


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray runtime: 2 CPUs, own temp dir, token auth off (local test only)."""
    ray = pytest.importorskip("ray")
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    tmp = tempfile.mkdtemp(prefix="pray")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    if old is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = old


def tiny_lm(texts):
    """A tiny random Llama (hidden 32, 2 layers, context 256) with a tokenizer trained on
    `texts`. Its embeddings are drawn larger than the usual 0.02 init: the tied output head
    of a fresh tiny model is nearly flat, and a frozen flat head is something no adapter can
    sharpen."""
    import dataclasses

    import torch

    from personal.config import ModelConfig
    from personal.models.base import build_tiny
    from personal.models.tokenizer import train_tokenizer

    tok = train_tokenizer(list(texts) * 3, 400)
    mc = dataclasses.replace(ModelConfig(), hidden_size=32, num_layers=2, num_heads=2,
                             intermediate_size=64, max_seq_len=256)
    model = build_tiny(mc, tok, seed=0)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=0.3)
    return model, tok


def replica_name(deployment: str) -> str:
    """The Ray actor name of the (first) replica of a Serve deployment."""
    import ray

    return next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if deployment in a["name"])


def replies_while_killing(url: str, bodies: list, deployment: str, after: int = 5,
                          delay_s: float = 0.15):
    """(replies, the killed replica's actor name): `bodies` sent to `url` 4 at a time with
    the endpoint client's retries, and the `deployment`'s replica killed `delay_s` after the
    `after`-th answer (a moment later, the next batch is being decoded)."""
    import itertools
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from personal.serving.http_eval import ClientOptions, call

    name = replica_name(deployment)
    replica = ray.get_actor(name, namespace="serve")
    answered = itertools.count(1)
    opts = ClientOptions(retries=6, backoff_s=0.5, timeout_s=120)
    killer = threading.Timer(delay_s, lambda: ray.kill(replica, no_restart=True))

    def send(body):
        reply = call(url, body, opts)
        if next(answered) == after:
            killer.start()
        return reply

    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(send, bodies))
    killer.join()
    return replies, name
