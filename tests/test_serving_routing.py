"""Serving without Ray: route tables of every servable strategy on a hand-made run (adapter
folders are stubs: routing reads only which exist), the LRU adapter slots, request
validation (every malformed request names its field), binding rules and the HTTP client's
retries against a stub server."""
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from personal.config import Config, apply_override
from personal.errors import PersonalError
from personal.models.chat import build_messages, last_messages
from personal.serving.http_eval import (ClientOptions, call, endpoint_url, offline_agreement,
                                        percentile, request_body)
from personal.serving.routing import (BASE, AdapterSlots, RequestError, Route, ServeConfig,
                                      batch_groups, check_host, parse_request, request_example,
                                      request_schema)

import toy_strategy  # noqa: F401,E402  (registers toy_unserved, a strategy the app refuses)

USERS = ["persona_000", "persona_001", "persona_002", "persona_003"]  # persona_003: cold start
TRAINED = USERS[:3]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from personal.data.synth import write_synth

    root = tmp_path_factory.mktemp("serving")
    write_synth(root / "data", users=4, sessions=6, seed=0)
    cfg = Config()
    for item in (f"data.path={root / 'data'}", "data.cold_start=1", "data.seed=0",
                 "data.simulate=true"):
        cfg = apply_override(cfg, item)
    return cfg, root


def make_ctx(world, name, strategy_options=None):
    import dataclasses

    from personal.experiment.context import Context

    cfg, root = world
    cfg = dataclasses.replace(cfg, strategy=strategy_options or {})
    ctx = Context.create(cfg, root / name)
    assert [p for p, s in ctx.splits.items() if s.cold_start] == ["persona_003"]
    return ctx


def stub_adapter(run, folder, prompts=False):
    path = run / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"")
    if prompts:
        (path / "personal_prompts.safetensors").write_bytes(b"")


def stub_fleet(run, folder, users=TRAINED, prompts=False):
    for u in users:
        stub_adapter(run, f"{folder}/{u}", prompts)


def labels(table, users=USERS + ["../../etc", "persona_999"]):
    return {u: table.route(u).label for u in users}


# --- route tables ------------------------------------------------------------------------------

def test_per_user_routes_own_adapter_and_falls_back_to_unified_else_base(world):
    from personal.serving.routing import route_table

    ctx = make_ctx(world, "per_user")
    run = ctx.run.path
    with pytest.raises(PersonalError, match="not trained yet"):
        route_table(ctx, "per_user_lora")
    stub_fleet(run, "adapters/per_user_lora")
    stub_adapter(run, "adapters/unified_lora")
    table = route_table(ctx, "per_user_lora")
    assert labels(table) == {
        "persona_000": "per_user_lora/persona_000", "persona_001": "per_user_lora/persona_001",
        "persona_002": "per_user_lora/persona_002", "persona_003": "unified_lora",
        "../../etc": "unified_lora", "persona_999": "unified_lora"}
    assert table.kind == "lora" and len(table.folders()) == 4

    # fallback=base: the cold-start user gets the base as offline; an unknown id still gets
    # the unified adapter the run has, and the base once it has none
    based = make_ctx(world, "per_user", {"per_user_lora": {"fallback": "base"}})
    assert route_table(based, "per_user_lora").route("persona_003") is BASE
    shutil.rmtree(run / "adapters/unified_lora")
    assert labels(route_table(based, "per_user_lora"))["../../etc"] == "base"


def test_unified_hybrid_prefix_and_base_tables(world):
    from personal.serving.routing import route_table

    ctx = make_ctx(world, "several")
    run = ctx.run.path
    stub_adapter(run, "adapters/unified_lora")
    stub_fleet(run, "adapters/hybrid_lora")
    stub_fleet(run, "adapters/prefix_per_user", prompts=True)
    assert set(labels(route_table(ctx, "unified_lora")).values()) == {"unified_lora"}
    assert set(labels(route_table(ctx, "base")).values()) == {"base"}
    hybrid = labels(route_table(ctx, "hybrid_lora"))
    assert hybrid["persona_001"] == "hybrid_lora/persona_001"
    assert hybrid["persona_003"] == hybrid["../../etc"] == "unified_lora"
    prefix = route_table(ctx, "prefix_per_user")
    assert prefix.kind == "prompt"
    # soft prompts cannot share a stack with the unified LoRA: everybody else gets the base
    assert labels(prefix)["persona_002"] == "prefix_per_user/persona_002"
    assert labels(prefix)["persona_003"] == labels(prefix)["../../etc"] == "base"
    with pytest.raises(PersonalError, match="cannot be served"):
        route_table(ctx, "toy_unserved")


def test_cluster_table_follows_the_assignment_file(world):
    import dataclasses

    from personal.strategies import cluster
    from personal.serving.routing import route_table

    ctx = make_ctx(world, "cluster", {"cluster_lora": {"n_clusters": 2,
                                                       "embedding_weight": 0.0}})
    run = ctx.run.path
    scfg = cluster.ClusterConfig(**{**dataclasses.asdict(cluster.ClusterConfig()),
                                    "n_clusters": 2, "embedding_weight": 0.0})
    assignment = {"persona_000": "cluster_00", "persona_001": "cluster_01",
                  "persona_002": "cluster_00", "persona_003": "cluster_01"}
    with pytest.raises(PersonalError, match="not found"):
        route_table(ctx, "cluster_lora")
    ctx.run.write_json(cluster.ASSIGNMENT, {
        "clusters": {"cluster_00": ["persona_000", "persona_002"],
                     "cluster_01": ["persona_001"]},
        "assignment": assignment, "inputs": cluster.assign_inputs(ctx, scfg)})
    stub_adapter(run, "adapters/cluster_lora/cluster_00")
    stub_adapter(run, "adapters/cluster_lora/cluster_01")
    got = labels(route_table(ctx, "cluster_lora"))
    assert {u: got[u] for u in USERS} == {u: f"cluster_lora/{c}" for u, c in assignment.items()}
    assert got["../../etc"] == "base"  # no unified adapter in this run
    stub_adapter(run, "adapters/unified_lora")
    assert labels(route_table(ctx, "cluster_lora"))["../../etc"] == "unified_lora"


def test_selective_table_follows_the_decisions(world):
    from personal.serving.routing import route_table

    ctx = make_ctx(world, "selective")
    run = ctx.run.path
    stub_adapter(run, "adapters/unified_lora")
    stub_fleet(run, "adapters/hybrid_lora")
    chosen = {"persona_000": "hybrid_lora", "persona_001": "unified_lora",
              "persona_002": "hybrid_lora", "persona_003": "hybrid_lora"}
    ctx.run.write_json("selective/decisions.json",
                       {"users": {u: {"chosen": c} for u, c in chosen.items()}})
    got = labels(route_table(ctx, "selective"))
    assert got == {"persona_000": "hybrid_lora/persona_000", "persona_001": "unified_lora",
                   "persona_002": "hybrid_lora/persona_002",
                   # meta-classifier chose the candidate, which answers a cold-start user with
                   # the unified adapter
                   "persona_003": "unified_lora",
                   "../../etc": "unified_lora", "persona_999": "unified_lora"}
    prefixed = make_ctx(world, "selective", {"selective": {"candidate": "prefix_per_user"}})
    with pytest.raises(PersonalError, match="cannot be served"):
        route_table(prefixed, "selective")


def test_one_stack_holds_one_kind(world):
    from personal.serving.routing import adapter_kind

    ctx = make_ctx(world, "kinds")
    stub_adapter(ctx.run.path, "adapters/a")
    stub_adapter(ctx.run.path, "adapters/b", prompts=True)
    assert adapter_kind(ctx.run.path, ["adapters/a"]) == "lora"
    assert adapter_kind(ctx.run.path, ["adapters/b"]) == "prompt"
    assert adapter_kind(ctx.run.path, []) == "none"
    with pytest.raises(PersonalError, match="one kind"):
        adapter_kind(ctx.run.path, ["adapters/a", "adapters/b"])


def test_route_labels():
    assert BASE.label == "base" and not BASE.folders
    assert Route.one("adapters/per_user_lora/persona_001").label == "per_user_lora/persona_001"
    mix = Route((("adapters/cluster_lora/cluster_00", 0.75), ("adapters/unified_lora", 0.25)))
    assert mix.is_mixture and mix.label == "cluster_lora/cluster_00*0.75+unified_lora*0.25"


# --- adapter slots -----------------------------------------------------------------------------

def test_slots_evict_the_least_recently_used_adapter_the_batch_does_not_need():
    slots = AdapterSlots(3)
    placed, loads = slots.assign(["a", "b", "a"])
    assert placed == {"a": 0, "b": 1} and loads == [("a", 0), ("b", 1)]
    placed, loads = slots.assign(["c"])
    assert loads == [("c", 2)]
    slots.assign(["a"])                           # a is now the most recently used
    placed, loads = slots.assign(["d", "c"])      # b is the LRU and not needed: evicted
    assert loads == [("d", 1)] and placed == {"d": 1, "c": 2}
    placed, loads = slots.assign(["e", "d", "c"])  # a is evicted, d and c stay put
    assert loads == [("e", 0)] and placed == {"e": 0, "d": 1, "c": 2}
    assert (slots.loads, slots.evictions) == (5, 2)
    with pytest.raises(PersonalError, match="exceed"):
        slots.assign(["a", "b", "c", "d"])
    slots.drop("e")
    assert slots.assign(["z"])[1] == [("z", 0)]


def test_batch_groups_fit_the_slots():
    routes = [Route.one(x) for x in "abcab"] + [BASE]
    assert batch_groups(routes, 2) == [[0, 1, 3, 4, 5], [2]]
    assert batch_groups(routes, 3) == [[0, 1, 2, 3, 4, 5]]
    with pytest.raises(PersonalError, match="max_loaded_adapters"):
        batch_groups([Route((("a", 0.5), ("b", 0.5)))], 1)


# --- requests ----------------------------------------------------------------------------------

CFG = ServeConfig(max_messages=4, max_message_chars=50, max_user_id_chars=20)
MORNING = {"time_of_day": "morning", "weather": "sunny"}


def good(**changes):
    body = {"user_id": "persona_001", "meta": dict(MORNING),
            "messages": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"},
                         {"role": "user", "text": "lights to 40"}]}
    body.update(changes)
    return body


def test_a_valid_request():
    req = parse_request(good(), CFG)
    assert req.user_id == "persona_001" and req.meta == MORNING
    assert [(m.role, m.text) for m in req.messages] == [("user", "hi"), ("assistant", "hello"),
                                                         ("user", "lights to 40")]
    assert parse_request(good(meta=None), CFG).meta is None
    no_meta = good()
    del no_meta["meta"]
    assert parse_request(no_meta, CFG).meta is None
    assert parse_request(good(user_id="../../etc"), CFG).user_id == "../../etc"


def msgs(*pairs):
    return [{"role": r, "text": t} for r, t in pairs]


BAD = [
    ([1, 2], "body", "must be an object, got array"),
    (good(extra=1), "extra", "unknown field"),
    ({"meta": None, "messages": msgs(("user", "x"))}, "user_id", "is required"),
    (good(user_id=7), "user_id", "must be a string, got number"),
    (good(user_id=""), "user_id", "non-empty"),
    (good(user_id="x" * 21), "user_id", "21 characters long, the limit is 20"),
    (good(user_id="a\nb"), "user_id", "control characters"),
    (good(meta="morning"), "meta", "must be an object, got string"),
    (good(meta={"mood": "happy"}), "meta.mood", "unknown field"),
    (good(meta={"weather": "foggy"}), "meta.weather", "must be one of sunny, cloudy"),
    (good(meta={"time_of_day": 3}), "meta.time_of_day", "got 3"),
    (good(messages="hi"), "messages", "must be an array, got string"),
    (good(messages=[]), "messages", "at least one"),
    (good(messages=msgs(*[("user", "x")] * 5)), "messages", "holds 5 messages, the limit is 4"),
    (good(messages=[{"role": "user", "text": "x", "name": "bob"}]), "messages[0].name",
     "unknown field"),
    (good(messages=[{"role": "user"}]), "messages[0].text", "is required"),
    (good(messages=msgs(("system", "obey"), ("user", "x"))), "messages[0].role",
     "must be one of user, assistant"),
    (good(messages=[{"role": "user", "text": None}]), "messages[0].text",
     "must be a string, got null"),
    (good(messages=msgs(("user", "y" * 51))), "messages[0].text", "51 characters long"),
    (good(messages=msgs(("user", "x"), ("assistant", "y"))), "messages[1].role",
     "last message must be the user's"),
    # text the tokenizer cannot take, or nothing to answer
    (good(messages=msgs(("user", "hi \ud800 there"))), "messages[0].text", "lone surrogate"),
    (good(messages=msgs(("user", "a\x00b"))), "messages[0].text", "control character U+0000"),
    (good(messages=msgs(("user", "   "))), "messages[0].text", "empty or only spaces"),
    # ids that would silently get the fallback adapter
    (good(user_id=" "), "user_id", "surrounding spaces or invisible"),
    (good(user_id="\u200b"), "user_id", "surrounding spaces or invisible"),
    (good(user_id="persona_000 "), "user_id", "surrounding spaces or invisible"),
]


@pytest.mark.parametrize("body,field,message", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_every_malformed_request_names_its_field(body, field, message):
    with pytest.raises(RequestError) as err:
        parse_request(body, CFG)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ") and message in str(err.value)


def test_a_replayed_example_gives_the_offline_prompt(world):
    """The request of an example becomes an example whose prompt messages are the offline
    ones (same system text with the context, same last-N history)."""
    ctx = make_ctx(world, "prompt")
    for e in ctx.examples("test")[:5]:
        served = request_example(parse_request(json.loads(json.dumps(request_body(e))),
                                               ServeConfig()))
        n = ctx.cfg.data.history_messages
        assert build_messages(served, last_messages(served.history, n), with_target=False) == \
            build_messages(e, last_messages(e.history, n), with_target=False)


def test_request_schema_states_the_limits():
    schema = request_schema(CFG)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["messages"]["maxItems"] == 4
    assert schema["properties"]["meta"]["properties"]["weather"]["enum"][0] == "sunny"


def test_a_busy_or_bad_port_is_refused_before_ray_starts():
    import socket

    from personal.serving.routing import check_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PersonalError, match=f"--port {port}: .* already in use"):
            check_port("127.0.0.1", port)
    check_port("127.0.0.1", port)  # free again
    for bad in (0, 70000):
        with pytest.raises(PersonalError, match="--port must be in 1..65535"):
            check_port("127.0.0.1", bad)


def test_a_loopback_server_answers_loopback_host_names_only():
    from personal.serving.routing import allowed_hosts, host_of

    hosts = allowed_hosts("127.0.0.1")
    for header in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"):
        assert host_of(header) in hosts, header
    for header in ("evil.example:8000", "127.0.0.1.evil.example", "attacker"):
        assert host_of(header) not in hosts, header
    assert allowed_hosts("0.0.0.0") is None  # --allow-remote: any name reaches it


def test_serve_config_and_binding_rules():
    with pytest.raises(PersonalError, match="max_batch_size"):
        ServeConfig(max_batch_size=0).check()
    with pytest.raises(PersonalError, match="cannot be served"):
        ServeConfig(strategy="toy_unserved").check()
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        check_host(host, allow_remote=False)
    for host in ("0.0.0.0", "192.168.1.5", "example.org"):
        with pytest.raises(PersonalError, match="--allow-remote"):
            check_host(host, allow_remote=False)
        check_host(host, allow_remote=True)


# --- the HTTP client ---------------------------------------------------------------------------

class FlakyHandler(BaseHTTPRequestHandler):
    """503 for the first `fail` POSTs, then 200; /bad answers 422."""

    fail = 2
    seen = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen += 1
        if self.path == "/bad":
            status, out = 422, {"error": "messages: bad", "field": "messages"}
        elif type(self).seen <= type(self).fail:
            status, out = 503, {"error": "restarting"}
        else:
            status, out = 200, {"text": "ok " + body["user_id"], "adapter": "base"}
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FlakyHandler.seen = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_retries_503_and_stops_at_422(stub_server):
    opts = ClientOptions(retries=3, backoff_s=0.01, timeout_s=10)
    reply = call(stub_server + "/v1/assist", {"user_id": "u"}, opts)
    assert reply.ok and reply.attempts == 3 and reply.body["text"] == "ok u"
    bad = call(stub_server + "/bad", {"user_id": "u"}, opts)
    assert bad.status == 422 and bad.attempts == 1 and not bad.ok
    FlakyHandler.seen = 0
    few = call(stub_server + "/v1/assist", {"user_id": "u"}, ClientOptions(retries=1,
                                                                          backoff_s=0.01))
    assert few.status == 503 and few.attempts == 2
    refused = call("http://127.0.0.1:9/v1/assist", {}, ClientOptions(retries=1, backoff_s=0))
    assert refused.status == 0 and refused.attempts == 2 and "Error" in refused.error


def test_client_helpers(tmp_path, world):
    assert endpoint_url("http://127.0.0.1:8000/", "/healthz") == "http://127.0.0.1:8000/healthz"
    for bad in ("file:///etc/passwd", "127.0.0.1:8000", "ftp://x"):
        with pytest.raises(PersonalError, match="http"):
            endpoint_url(bad, "/v1/assist")
    assert percentile([5, 1, 4, 2, 3], 50) == 3 and percentile(list(range(1, 101)), 99) == 99
    ctx = make_ctx(world, "agree")
    examples = ctx.examples("test")[:3]
    assert offline_agreement(ctx.run.path, "x", examples, ["a", "b", "c"]) is None
    with open(ctx.run.path / "predictions" / "x.jsonl", "w") as f:
        for e, p in zip(examples, ["a", "B", "c"]):
            f.write(json.dumps({"persona_id": e.persona_id, "session_id": e.session_id,
                                "turn_index": e.turn_index, "prediction": p}) + "\n")
    got = offline_agreement(ctx.run.path, "x", examples, ["a", "b", "c"])
    assert got == {"compared": 3, "equal": 2, "rate": 2 / 3}


# --- the command line --------------------------------------------------------------------------

def run_cli(capsys, *args):
    from personal.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_cli_checks_before_serving_or_replaying(world, capsys):
    ctx = make_ctx(world, "cli")
    code, out, _ = run_cli(capsys, "serve", "--help")
    assert code == 0 and "Example: personal serve" in out and "--allow-remote" in out
    code, _, err = run_cli(capsys, "serve", str(ctx.run.path), "--host", "0.0.0.0")
    assert code == 2 and "--allow-remote" in err
    code, _, err = run_cli(capsys, "serve", str(ctx.run.path))  # nothing trained in it
    assert code == 2 and "choose one with --strategy" in err
    code, _, err = run_cli(capsys, "serve", str(ctx.run.path), "--strategy", "toy_unserved")
    assert code == 2 and "cannot be served" in err
    code, _, err = run_cli(capsys, "eval", str(ctx.run.path), "--endpoint", "file:///etc")
    assert code == 2 and "http(s) URL" in err
    code, _, err = run_cli(capsys, "eval", str(ctx.run.path), "--endpoint",
                           "http://127.0.0.1:9", "--strategy", "a", "--strategy", "b")
    assert code == 2 and "at most one --strategy" in err
