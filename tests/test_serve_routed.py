"""Strategies served through a request router (slow: Ray Serve on loopback): moe_lora's learned
router and retrieval_trained's index as the app's RequestRouter deployment. Served answers
equal offline predictions, the response names the experts and weights (or the exchanges
retrieved), the official `openai` client on /v1/chat/completions gets /v1/assist's answer for
three users including a cold-start one, the chat door refuses what it cannot honour in the
OpenAI error shape, and killing the router replica under load loses no request."""
import copy
import dataclasses
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from personal.distributed.smoke import smoke_config
from personal.experiment.context import Context
from personal.experiment.pipeline import train_strategy
from personal.strategies.registry import get_strategy, strategy_config

torch.set_num_threads(1)
pytestmark = pytest.mark.slow

OPTIONS = {"moe_lora": {"label_turns": 4, "diagnostic_turns": 0, "mode": "soft"},
           "retrieval_trained": {"epochs": 15}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """4 users (one cold start), moe_lora (soft, over cluster_lora's two adapters) and
    retrieval_trained."""
    root = tmp_path_factory.mktemp("routed")
    cfg = smoke_config(root, users=4, sessions=6, overrides=[
        "train.epochs=20", "train.max_steps=20", "train.eval_every=4", "train.lr=5e-2",
        "train.batch_size=2", "train.patience=0", "generation.max_new_tokens=8",
        "data.cold_start=1"])
    ctx = Context.create(dataclasses.replace(cfg, strategy=copy.deepcopy(OPTIONS)), root / "run")
    for name in ("moe_lora", "retrieval_trained"):
        train_strategy(ctx, name)
    return ctx


def offline(ctx, name, examples):
    spec = get_strategy(name)
    return spec.predictor(ctx, strategy_config(spec, ctx.cfg.strategy.get(name)))(examples)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(ctx, strategy):
    from personal.distributed.serve import build_app, start_app
    from personal.serving.http_eval import wait_ready
    from personal.serving.routing import ServeConfig

    port = free_port()
    app = build_app(ctx.run.path, ServeConfig(strategy=strategy, max_batch_size=8,
                                              batch_wait_timeout_s=0.05))
    start_app(app, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, 180)
    return url


@pytest.fixture(scope="module")
def moe_url(world, ray_local):
    from ray import serve

    url = deploy(world, "moe_lora")
    yield url
    serve.shutdown()


def three_users(ctx):
    """Two test turns each of two training users and the cold-start user."""
    cold = [p for p, sp in ctx.splits.items() if sp.cold_start]
    users = [p for p in ctx.training_personas()][:2] + cold
    return [e for p in users for e in ctx.examples("test", [p])[:2]]


def test_moe_served_equals_offline_and_names_its_experts(world, moe_url):
    from personal.serving.http_eval import _send, request_body

    examples = world.examples("test")
    expected = offline(world, "moe_lora", examples)
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda e: _send(moe_url + "/v1/assist", request_body(e), 120),
                                examples))
    assert all(status == 200 for status, _ in replies), replies[:2]
    assert [body["text"] for _, body in replies] == expected
    for _, body in replies:
        names = [x["name"] for x in body["experts"]]
        assert names == ["cluster_lora/cluster_00", "cluster_lora/cluster_01"]  # soft: all
        assert abs(sum(x["weight"] for x in body["experts"]) - 1.0) <= 2e-3


def test_the_openai_client_gets_the_assist_answer(world, moe_url):
    from openai import OpenAI

    from personal.serving.http_eval import _send, request_body

    client = OpenAI(base_url=moe_url + "/v1", api_key="unused", max_retries=0)
    examples = three_users(world)
    assert any(world.splits[e.persona_id].cold_start for e in examples)
    for e in examples:
        status, assist = _send(moe_url + "/v1/assist", request_body(e), 120)
        assert status == 200
        reply = client.chat.completions.create(
            model="personal", user=e.persona_id, metadata=e.meta,
            messages=[{"role": m.role, "content": m.text} for m in e.history])
        assert reply.choices[0].message.content == assist["text"]
        assert reply.choices[0].message.role == "assistant"
        extra = reply.model_extra["personal"]
        assert extra["experts"] == assist["experts"] and extra["adapter"] == assist["adapter"]


def test_the_chat_door_refuses_what_it_cannot_honour(world, moe_url):
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=moe_url + "/v1", api_key="unused", max_retries=0)
    hello = [{"role": "user", "content": "Lights to 40 please."}]
    cases = [({"messages": [{"role": "system", "content": "Be brief."}] + hello},
              "messages[0].role"),
             ({"messages": hello, "temperature": 0.7}, "temperature"),
             ({"messages": hello, "metadata": {"weather": "foggy"}}, "metadata.weather"),
             ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content")]
    for kwargs, param in cases:
        with pytest.raises(openai.UnprocessableEntityError) as err:
            client.chat.completions.create(model="persona_000", **kwargs)
        assert err.value.body["param"] == param, err.value.body
        assert err.value.body["type"] == "invalid_request_error"


def test_killed_router_replica_loses_no_request(world, moe_url):
    """Kill the RequestRouter replica 0.15 s after the 5th answer: requests in flight get 503
    and are retried, later ones wait for Serve's new replica; every answer equals offline."""
    from conftest import replica_name, replies_while_killing
    from personal.serving.http_eval import request_body

    examples = world.examples("test") * 3
    expected = offline(world, "moe_lora", examples)
    replies, name = replies_while_killing(moe_url + "/v1/assist",
                                          [request_body(e) for e in examples], "RequestRouter")
    assert all(r.ok for r in replies), [r.body for r in replies if not r.ok][:2]
    assert [r.body["text"] for r in replies] == expected
    assert replica_name("RequestRouter") != name  # a new replica answered the later ones


def test_retrieval_trained_is_served_with_its_index(world, moe_url):
    """(After the moe app: one app at a time.) Served answers equal offline, and each names
    the user's training exchanges its prompt carried."""
    from ray import serve

    from personal.serving.http_eval import _send, request_body

    serve.shutdown()  # the proxy keeps its port until Serve restarts
    url = deploy(world, "retrieval_trained")
    examples = world.examples("test")
    expected = offline(world, "retrieval_trained", examples)
    replies = [_send(url + "/v1/assist", request_body(e), 120) for e in examples]
    assert all(status == 200 for status, _ in replies)
    assert [body["text"] for _, body in replies] == expected
    for e, (_, body) in zip(examples, replies):
        assert body["adapter"] == "retrieval_trained"
        assert body["retrieved"], body  # cold-start users: from their validation sessions
        sessions = {x["session"] for x in body["retrieved"]}
        ids = {s.session_id for s in world.dataset.by_id()[e.persona_id].sessions}
        assert sessions <= ids  # the user's own sessions only
