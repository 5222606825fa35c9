"""moe_lora: the mixture the engine computes is the hand-computed one, the router's choices
follow its weights, it learns a routing that depends on the message, it is saved and reloads
to identical weights, a collapse is reported, cold-start and unknown users are routed by
their message, shared-expert experts are unified + a residual, and bad options are refused
naming the option."""
import dataclasses

import numpy as np
import pytest
import torch

from personal.distributed.smoke import smoke_config
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import train_strategy
from personal.strategies import moe
from personal.strategies.registry import get_strategy, strategy_config

torch.set_num_threads(1)
U32 = 2.0 ** -24  # float32 unit roundoff


def test_a_two_expert_soft_mixture_equals_the_hand_computed_sum():
    """y = W x + s (w1 B1 A1 x + w2 B2 A2 x) for one LoRA layer, in float64 by hand."""
    from personal.engine import StackedLoRALinear
    from personal.engine.stacked_lora import Routing

    g = torch.Generator().manual_seed(0)
    base = torch.nn.Linear(12, 10, bias=False)
    base.weight.data = torch.randn(10, 12, generator=g)
    routing = Routing(2)
    layer = StackedLoRALinear(base, routing, rank=3, alpha=6.0)
    layer.lora_A.data = torch.randn(2, 3, 12, generator=g)
    layer.lora_B.data = torch.randn(2, 10, 3, generator=g)
    x = torch.randn(4, 5, 12, generator=g)
    w = torch.tensor([[0.7, 0.3], [0.25, 0.75], [1.0, 0.0], [0.5, 0.5]])
    with torch.no_grad():
        routing.set(w)
        got = layer(x).double()
    X, W0 = x.double(), base.weight.double()
    A, B = layer.lora_A.detach().double(), layer.lora_B.detach().double()
    s = 6.0 / 3
    want = X @ W0.T
    terms = (X @ W0.T).abs()
    for k in range(2):
        low = X @ A[k].T
        part = w[:, k].double().view(-1, 1, 1) * (low @ B[k].T) * s
        want = want + part
        terms = terms + w[:, k].double().view(-1, 1, 1) * ((X.abs() @ A[k].abs().T)
                                                            @ B[k].abs().T) * s
    # float32 dot products of n terms err by at most n*u*sum|terms| (n: 12 inputs + 3 ranks)
    bound = (12 + 3 + 4) * U32 * terms
    assert bool(((got - want).abs() <= bound).all()), float(((got - want).abs() / bound).max())
    assert not torch.allclose(got, X @ W0.T)  # the experts do contribute


def test_hard_weights_are_the_argmax_and_topk_renormalises():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]])
    hard = moe.route_weights(probs, "hard", 2)
    assert hard.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert (hard.argmax(1) == probs.argmax(1)).all()
    top = moe.route_weights(probs, "topk", 2)
    assert top[0].tolist() == [0.0, 0.667, 0.333] and top[1].tolist() == [0.625, 0.0, 0.375]
    soft = moe.route_weights(probs, "soft", 2)
    assert np.allclose(soft, probs, atol=5e-4) and (soft > 0).all()


def test_targets_from_expert_losses():
    losses = np.array([[1.0, 0.5, 2.0], [0.3, 0.3, 0.9]])
    best = moe.router_targets(losses, moe.MoEConfig(target="best"))
    assert best.tolist() == [[0, 1, 0], [1, 0, 0]]  # ties: the first expert
    soft = moe.router_targets(losses, moe.MoEConfig(target="soft", temperature=0.5))
    e = np.exp(-losses[0] / 0.5)
    assert np.allclose(soft[0], e / e.sum()) and np.allclose(soft.sum(1), 1.0)


#: Three experts whose right one depends on what the message is about.
TOPICS = {0: ["Turn the lights down a bit", "Dim the lamp in the living room",
              "Set the lights to warm white", "Can you brighten the bedroom lights",
              "Lights off in the hall please", "Make the kitchen light brighter"],
          1: ["Set the thermostat to 21 degrees", "It's cold, raise the heating",
              "Cool the house down to 19", "Turn the AC on please",
              "Lower the temperature a little", "Heat the living room to 22"],
          2: ["Play some jazz music", "Turn the volume up on the speaker",
              "Put on my morning playlist", "Skip this song please",
              "Play relaxing music in the bedroom", "Pause the music"]}


def test_a_router_learns_which_expert_a_message_needs():
    """Trained on four messages per topic (labels: the lowest-loss expert of each turn), it
    picks the right expert for two unseen phrasings per topic: well above chance (1/3)."""
    from personal.data.embed import embed

    train = [(t, k) for k, texts in TOPICS.items() for t in texts[:4]]
    test = [(t, k) for k, texts in TOPICS.items() for t in texts[4:]]
    losses = np.full((len(train), 3), 2.0)
    for i, (_, k) in enumerate(train):
        losses[i, k] = 1.0
    scfg = moe.MoEConfig(target="best", balance=0.01, router_steps=200)
    net, _ = moe.fit_router(embed([t for t, _ in train]), moe.router_targets(losses, scfg), scfg)
    picked = moe.router_probs(net, embed([t for t, _ in test])).argmax(1)
    accuracy = float((picked == np.array([k for _, k in test])).mean())
    assert accuracy >= 5 / 6, accuracy


def test_collapse_is_reported_above_95_percent():
    k = 2
    probs = np.array([[0.9, 0.1]] * 39 + [[0.2, 0.8]])
    weights = moe.route_weights(probs, "hard", 1)
    shares = np.bincount(weights.argmax(1), minlength=k) / len(probs)
    rows = moe.diagnostic_rows(40, shares, probs, weights, np.zeros(40, int), k, 0.5, 0.6)
    assert shares[0] == 0.975 and "(collapsed)" in rows[0]["value"]
    even = np.array([[0.9, 0.1]] * 20 + [[0.2, 0.8]] * 20)
    shares = np.bincount(even.argmax(1), minlength=k) / 40
    rows = moe.diagnostic_rows(40, shares, even, even, np.zeros(40, int), k, 0.5, 0.6)
    assert "collapsed" not in rows[0]["value"]
    assert rows[2]["value"].startswith("50.0%")  # oracle agreement: half pick expert 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """4 users (one cold start), moe_lora on cluster_lora's two cluster adapters, with the
    users' features as router input too."""
    root = tmp_path_factory.mktemp("moe")
    cfg = smoke_config(root, users=4, sessions=6, overrides=[
        "train.epochs=20", "train.max_steps=20", "train.eval_every=4", "train.lr=5e-2",
        "train.batch_size=2", "train.patience=0", "generation.max_new_tokens=6",
        "data.cold_start=1"])
    opts = {"moe_lora": {"label_turns": 4, "diagnostic_turns": 6, "router_input": "message+user",
                         "mode": "soft"}}
    cfg = dataclasses.replace(cfg, strategy=opts)
    ctx = Context.create(cfg, root / "run")
    train_strategy(ctx, "moe_lora")
    return ctx


def moe_config(ctx, **changes):
    spec = get_strategy("moe_lora")
    return dataclasses.replace(strategy_config(spec, ctx.cfg.strategy.get("moe_lora")), **changes)


def test_the_router_is_saved_as_safetensors_and_json_and_reloads_identically(world):
    from safetensors.torch import load_file

    record = world.run.read_json(moe.ROUTER_CONFIG)
    assert record["experts"] == ["adapters/cluster_lora/cluster_00",
                                 "adapters/cluster_lora/cluster_01"]
    assert record["router_input"] == "message+user" and record["inputs_width"] == 384 + 63
    saved = load_file(str(world.run.path / moe.ROUTER_WEIGHTS))
    net, _ = moe.load_router(world)
    assert saved.keys() == net.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    again, _ = moe.load_router(Context.create(world.cfg, world.run.path))
    examples = world.examples("test")
    feats = moe.RequestFeatures(world, "message+user", record["scaling"])(examples)
    assert np.array_equal(moe.router_probs(net, feats), moe.router_probs(again, feats))


def test_cold_start_and_unknown_users_are_routed_by_their_message(world):
    from personal.distributed.runtime import config_payload
    from personal.distributed.serve import AdapterGenerator
    from personal.serving.routing import (AssistRequest, ServeConfig, decide, request_router,
                                          route_table)

    cold = [p for p, sp in world.splits.items() if sp.cold_start]
    examples = world.examples("test", cold)
    assert cold and examples
    stranger = [dataclasses.replace(e, persona_id="someone_new") for e in examples]
    router = moe.MoERouter(world, moe_config(world))
    feats = router.features(stranger)
    assert not feats[:, 384:].any()  # an unknown user: the mean (0) features
    table = route_table(world, "moe_lora")
    core = AdapterGenerator(config_payload(world.cfg), world.run.path, table.folders(),
                            ServeConfig(max_loaded_adapters=2))
    rr = request_router(world, "moe_lora")
    for batch in (examples, stranger):
        requests = [AssistRequest(e.persona_id, e.meta, tuple(e.history)) for e in batch]
        decisions = decide(table, rr, requests)
        assert all(d.route.is_mixture and d.info["experts"] for d in decisions)
        weights = [sum(x["weight"] for x in d.info["experts"]) for d in decisions]
        assert all(abs(w - 1.0) <= 2e-3 for w in weights)  # 3-decimal rounding
        served = core.answer(requests, [d.route for d in decisions])
        offline = get_strategy("moe_lora").predictor(world, moe_config(world))(batch)
        assert [r["text"] for r in served] == offline


def test_diagnostics_are_recorded_for_the_report(world):
    record = world.run.read_json(moe.DIAGNOSTICS)
    assert record["turns"] == 6 and len(record["shares"]) == 2
    assert abs(sum(record["shares"]) - 1.0) < 1e-9
    assert 0 <= record["entropy"] <= record["max_entropy"] + 1e-9
    assert 0 <= record["oracle_agreement"] <= 1
    assert 0 <= record["uniform_emb_sim"] <= 1 and "uniform mixture" in record["rows"][3]["value"]
    assert [r["check"] for r in record["rows"]] == ["expert shares", "routing entropy",
                                                    "oracle agreement", "oracle headroom"]


@pytest.mark.parametrize("n_experts", [None, 2])
def test_shared_expert_experts_are_unified_plus_a_residual(world, tmp_path, n_experts):
    """With shared_expert the experts train as residuals on the frozen unified adapter and
    are exported as unified + residual (rank 2r): at Σw = 1 unified stays fully on."""
    from personal.engine import import_peft

    cfg = dataclasses.replace(world.cfg, strategy={"moe_lora": {
        "shared_expert": True, "n_experts": n_experts, "label_turns": 4, "diagnostic_turns": 0,
        "epochs": 5, "lr": 5e-2}})
    ctx = Context.create(cfg, tmp_path / "run")
    train_strategy(ctx, "moe_lora")
    folders = moe.expert_folders(ctx, moe_config(ctx))
    assert folders == ["adapters/moe_lora/cluster_00", "adapters/moe_lora/cluster_01"]
    experts = import_peft([ctx.run.path / f for f in folders])
    unified = import_peft([ctx.run.path / "adapters/unified_lora"])
    r, s = unified.rank, unified.alpha / unified.rank
    assert experts.rank == 2 * r and experts.alpha == experts.rank  # the folder's scaling: 1
    for key, a in unified.adapter(0).items():  # each expert's first half is unified exactly
        for k in range(2):
            mine = experts.adapter(k)[key]
            if ".lora_A." in key:
                assert torch.equal(mine[:r], a), key
            else:
                assert torch.equal(mine[:, :r], a.float() * s), key
                assert mine[:, r:].abs().max() > 0, key  # the residual trained


@pytest.mark.parametrize("option,value", [("mode", "bogus"), ("n_experts", 1), ("top_k", 0),
                                          ("balance", -0.1), ("temperature", 0.0),
                                          ("router_input", "user"), ("target", "worst")])
def test_bad_options_are_refused_naming_the_option(option, value):
    with pytest.raises(PersonalError, match=f"strategy.moe_lora.*{option}"):
        strategy_config(get_strategy("moe_lora"), {option: value})
