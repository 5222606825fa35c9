"""Serving a finished run: the generator core (no Ray) answers exactly as the strategies'
offline predictors, with fewer stack slots than adapters and in any batching; then the Ray
Serve app on loopback (slow): real HTTP requests get each user's adapter, the fallback for
unknown ids, a named error for malformed requests, the offline texts (`personal eval
--endpoint` agrees with offline evaluation on every turn, and a bad request batched with good
ones fails alone), idle connections closed, no lost request when the generator replica is
killed mid-load, and `personal serve` leaves no process behind after SIGTERM."""
import copy
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from personal.distributed.smoke import smoke_config
from personal.experiment.context import Context
from personal.experiment.pipeline import evaluate_strategy, train_strategy
from personal.serving.routing import AssistRequest, Route, ServeConfig, route_table
from personal.strategies.registry import get_strategy, strategy_config

torch.set_num_threads(1)

#: Per-user strategies need more steps than the smoke schedule to say anything (else the
#: random smoke base answers "" and the equalities below compare nothing).
OPTIONS = {"per_user_lora": {"epochs": 15, "lr": 0.05}, "prefix_per_user": {"epochs": 15, "lr": 0.1}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """3 users (persona_002 cold start: no adapter of its own), per-user LoRA (plus the
    unified fallback) and per-user soft prompts, evaluated offline."""
    root = tmp_path_factory.mktemp("serve")
    cfg = smoke_config(root, users=3, sessions=6, overrides=[
        "train.epochs=20", "train.max_steps=20", "train.eval_every=4", "train.lr=5e-2",
        "train.batch_size=2", "train.patience=0", "generation.max_new_tokens=8",
        "data.cold_start=1"])
    cfg = dataclasses.replace(cfg, strategy=copy.deepcopy(OPTIONS))
    ctx = Context.create(cfg, root / "run")
    for name in ("per_user_lora", "prefix_per_user"):
        evaluate_strategy(ctx, name, train_strategy(ctx, name))
    return ctx


def offline(ctx, name, examples):
    spec = get_strategy(name)
    return spec.predictor(ctx, strategy_config(spec, ctx.cfg.strategy.get(name)))(examples)


def as_request(e):
    return AssistRequest(e.persona_id, e.meta, tuple(e.history))


def generator(ctx, name, slots):
    from personal.distributed.runtime import config_payload
    from personal.distributed.serve import AdapterGenerator

    table = route_table(ctx, name)
    core = AdapterGenerator(config_payload(ctx.cfg), ctx.run.path, table.folders(),
                            ServeConfig(max_loaded_adapters=slots))
    return core, table


@pytest.mark.parametrize("name,slots", [("per_user_lora", 2), ("prefix_per_user", 1)])
def test_generator_answers_as_offline_with_fewer_slots_than_adapters(world, name, slots):
    examples = world.examples("test")
    expected = offline(world, name, examples)
    if name == "per_user_lora":
        # The adapters answer differently, so equality says something. (How many distinct
        # texts the random smoke base ends with is luck: lr 0.05 for 20 epochs turns any
        # float-order change into other weights.)
        assert len(set(expected)) >= 2
    core, table = generator(world, name, slots)
    assert len(table.folders()) > slots
    routes = [table.route(e.persona_id) for e in examples]
    together = core.answer([as_request(e) for e in examples], routes)
    assert [r["text"] for r in together] == expected
    one_by_one = [core.answer([as_request(e)], [r])[0]["text"] for e, r in zip(examples, routes)]
    assert one_by_one == expected
    stats = core.stats()
    assert stats["slots"] == slots and stats["evictions"] > 0 and stats["passes"] > 1 + len(
        examples)  # the mixed batch took several passes over the slots


def test_a_too_long_prompt_fails_alone_and_a_weighted_route_mixes(world):
    core, table = generator(world, "per_user_lora", 3)
    e = world.examples("test")[0]
    long = AssistRequest(e.persona_id, e.meta, tuple(e.history[:-1]) + (
        dataclasses.replace(e.history[-1], text="lights " * 400),))
    unified = Route.one("adapters/unified_lora")
    out = core.answer([as_request(e), long], [unified, unified])
    assert "text" in out[0] and out[1]["field"] == f"messages[{len(e.history) - 1}].text"
    assert "too long for the model's context" in out[1]["error"]
    # all weight on the unified adapter, through the mixture path: the unified answer
    own = table.route(e.persona_id)
    mixed = Route((("adapters/unified_lora", 1.0), (own.folders[0], 0.0)))
    assert mixed.is_mixture
    assert core.answer([as_request(e)], [mixed])[0]["text"] == out[0]["text"]
    outside = Route.one("adapters/../config.yaml")
    with pytest.raises(Exception, match="outside this app's route table"):
        core.answer([as_request(e)], [outside])


def test_a_request_that_breaks_its_batch_fails_alone(world, monkeypatch):
    """A row that makes the decoding pass raise is answered alone with an error; every other
    request of its batch still gets its offline answer (before: the whole batch failed)."""
    examples = world.examples("test")[:6]
    expected = offline(world, "per_user_lora", examples)
    core, table = generator(world, "per_user_lora", 3)
    poison = core._prompt(as_request(examples[2]), {})
    real = core._pass

    def fragile(prompts, routes):
        if poison in prompts:
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")
        return real(prompts, routes)

    monkeypatch.setattr(core, "_pass", fragile)
    out = core.answer([as_request(e) for e in examples],
                      [table.route(e.persona_id) for e in examples])
    assert out[2]["failed"] and "UnicodeEncodeError" in out[2]["error"]
    assert [r["text"] for i, r in enumerate(out) if i != 2] == \
        [t for i, t in enumerate(expected) if i != 2]


# --- The Ray Serve app on loopback ------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(world, ray_local):
    """The per-user app with 2 slots for 3 adapters, batches of up to 8 requests."""
    from ray import serve

    from personal.distributed.serve import build_app, start_app
    from personal.serving.http_eval import wait_ready

    port = free_port()
    app = build_app(world.run.path, ServeConfig(strategy="per_user_lora", max_loaded_adapters=2,
                                                max_batch_size=8, batch_wait_timeout_s=0.05))
    start_app(app, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, 120)
    yield url
    serve.shutdown()


def post(url, body, raw=None):
    from personal.serving.http_eval import _send

    if raw is None:
        return _send(url + "/v1/assist", body, 60)
    req = urllib.request.Request(url + "/v1/assist", data=raw, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


HELLO = [{"role": "user", "text": "Could you set the lights to 40 please?"}]


@pytest.mark.slow
def test_each_user_gets_their_adapter_and_unknown_ids_the_fallback(world, served):
    got = {}
    for uid in ("persona_000", "persona_001", "persona_002", "../../etc", "persona_000/../x"):
        status, body = post(served, {"user_id": uid, "meta": None, "messages": HELLO})
        assert status == 200 and isinstance(body["text"], str) and body["latency_ms"] > 0
        assert isinstance(body["actions"], dict)
        got[uid] = body["adapter"]
    assert got == {"persona_000": "per_user_lora/persona_000",
                   "persona_001": "per_user_lora/persona_001",
                   "persona_002": "unified_lora",  # cold start: the strategy's fallback
                   "../../etc": "unified_lora", "persona_000/../x": "unified_lora"}


MALFORMED = [
    ({"user_id": "persona_000", "messages": HELLO, "debug": True}, "debug"),
    ({"user_id": ["persona_000"], "messages": HELLO}, "user_id"),
    ({"user_id": "persona_000", "meta": {"weather": "foggy"}, "messages": HELLO}, "meta.weather"),
    ({"user_id": "persona_000", "meta": {"mood": "ok"}, "messages": HELLO}, "meta.mood"),
    ({"user_id": "persona_000", "messages": HELLO * 33}, "messages"),
    ({"user_id": "persona_000", "messages": [{"role": "user", "text": "x" * 2001}]},
     "messages[0].text"),
    ({"user_id": "persona_000", "messages": [{"role": "user", "text": 5}]}, "messages[0].text"),
    ({"user_id": "persona_000", "messages": HELLO + [{"role": "assistant", "text": "ok"}]},
     "messages[1].role"),
    ({"user_id": "persona_000", "messages": [{"role": "user", "text": "lights " * 280}]},
     "messages[0].text"),  # within the message limit, beyond the model's context
]


@pytest.mark.slow
def test_malformed_requests_are_rejected_naming_the_field(served):
    for body, field in MALFORMED:
        status, reply = post(served, body)
        assert status == 422 and reply["field"] == field, (body, reply)
        assert reply["error"].startswith(field + ":")
    status, reply = post(served, None, raw=b"{not json")
    assert status == 400 and reply["field"] == "body"


@pytest.mark.slow
def test_hostile_requests_get_a_named_4xx(served):
    def raw(data, headers):
        req = urllib.request.Request(served + "/v1/assist", data=data, method="POST",
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    good = json.dumps({"user_id": "persona_000", "messages": HELLO}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded"):
        status, reply = raw(good, {"Content-Type": ctype})
        assert status == 415 and reply["field"] == "content-type", ctype
    status, reply = raw(good, {"Content-Type": "application/json", "Host": "evil.example"})
    assert status == 403 and reply["field"] == "host"
    deep = b"[" * 1000 + b"]" * 1000  # 2 KB
    status, reply = raw(deep, {"Content-Type": "application/json"})
    assert status == 400 and "nested too deeply" in reply["error"]
    twice = b'{"user_id": "a", "user_id": "b", "messages": []}'
    status, reply = raw(twice, {"Content-Type": "application/json"})
    assert status == 400 and "appears twice" in reply["error"]
    status, _ = raw(good, {"Content-Type": "application/json"})
    assert status == 200  # and a good request is still answered


@pytest.mark.slow
def test_schema_driven_fuzzing_finds_no_5xx_and_no_schema_violation(served):
    """schemathesis draws requests from the app's own OpenAPI schema: every answer is below
    500, has a declared status and content type and conforms to the schema's responses, and
    a good request is still answered after it. (Its "schema-valid request rejected" check is
    left out: "the last message is the user's" cannot be said in the JSON schema, so such
    bodies are refused with a 422 naming the field, as the schema's description says.)"""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                     response_schema_conformance, status_code_conformance)

    schema = schemathesis.openapi.from_url(served + "/openapi.json")
    for path in ("/v1/assist", "/v1/chat/completions"):  # the OpenAI door too
        operation = schema[path]["POST"]
        statuses = []

        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
        @given(operation.as_strategy())
        def fuzz(case):
            response = case.call(headers={"Content-Type": "application/json"}, timeout=60)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.body, response.text)
            case.validate_response(response, checks=[not_a_server_error,
                                                     status_code_conformance,
                                                     content_type_conformance,
                                                     response_schema_conformance])

        fuzz()
        assert len(statuses) >= 20 and statuses.count(200) >= 5, (path, sorted(set(statuses)))
    status, reply = post(served, {"user_id": "persona_000", "messages": HELLO})
    assert status == 200 and reply["text"] is not None


@pytest.mark.slow
def test_openapi_and_health(served):
    with urllib.request.urlopen(served + "/openapi.json", timeout=30) as resp:
        spec = json.loads(resp.read())
    schema = spec["paths"]["/v1/assist"]["post"]["requestBody"]["content"]["application/json"]
    assert schema["schema"]["properties"]["messages"]["maxItems"] == 32
    assert "/healthz" in spec["paths"]
    with urllib.request.urlopen(served + "/healthz", timeout=30) as resp:
        health = json.loads(resp.read())
    assert health["strategy"] == "per_user_lora" and health["generator"]["slots"] == 2
    assert "/" not in health["run"]  # the run's name, not where it lives on the server
    for page in ("/docs", "/redoc"):  # their scripts would come from a public CDN
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(served + page, timeout=30)
        assert err.value.code == 404


@pytest.mark.slow
def test_endpoint_evaluation_equals_offline_evaluation(world, served):
    """The whole test split as concurrent traffic: every answer is the offline one, so the
    metrics are too; requests of several users share batches."""
    from personal.serving.http_eval import ClientOptions, evaluate_endpoint, wait_ready

    before = wait_ready(served)["generator"]
    result = evaluate_endpoint(world.run.path, served, "per_user_lora",
                               opts=ClientOptions(concurrency=8))
    assert result.name == "per_user_lora@endpoint"
    agree = result.serving["offline_agreement"]
    assert agree["compared"] == len(world.examples("test")) and agree["rate"] == 1.0
    offline_summary = world.run.read_json("metrics/per_user_lora_summary.json")
    same = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731 - NaN == NaN as JSON text
    assert same(result.summary["macro"]) == same(offline_summary["macro"])
    assert (world.run.path / "predictions" / "per_user_lora@endpoint.jsonl").is_file()
    after = wait_ready(served)["generator"]
    batches = after["batches"] - before["batches"]
    assert batches < after["requests"] - before["requests"]  # some batches held several


@pytest.mark.slow
def test_a_bad_request_batched_with_good_ones_fails_alone(world, served):
    """Ten good requests sent at once with two bad ones: a prompt too long for the model's
    context reaches the generator and is batched with the good ones (422 naming the field),
    a lone surrogate is refused before (422; over HTTP no request that passes validation can
    make the decoding pass itself raise: `test_a_request_that_breaks_its_batch_fails_alone`
    covers that row isolation). Every good request gets its offline answer."""
    from personal.serving.http_eval import request_body, wait_ready

    examples = (world.examples("test") * 4)[:10]
    expected = offline(world, "per_user_lora", examples)
    long = request_body(examples[0])
    last = len(long["messages"]) - 1
    long["messages"][last]["text"] = "lights " * 280  # within the text limit, not the context
    surrogate = {"user_id": "persona_000", "messages": [{"role": "user",
                                                         "text": "hi \ud800 there"}]}
    bodies = [request_body(e) for e in examples[:5]] + [long] + \
        [request_body(e) for e in examples[5:]] + [surrogate]
    before = wait_ready(served)["generator"]
    start = threading.Barrier(len(bodies))

    def send(body):
        start.wait()  # all at once: they share the generator's batches
        return post(served, body)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        replies = list(pool.map(send, bodies))
    after = wait_ready(served)["generator"]
    good = replies[:5] + replies[6:-1]
    assert [status for status, _ in good] == [200] * 10, good
    assert [reply["text"] for _, reply in good] == expected
    (status, reply), (status2, reply2) = replies[5], replies[-1]
    assert status == 422 and reply["field"] == f"messages[{last}].text"
    assert "too long for the model's context" in reply["error"]
    assert status2 == 422 and reply2["field"] == "messages[0].text"
    assert "lone surrogate U+D800" in reply2["error"]
    # the long one reached the generator, the surrogate did not; they came in shared batches
    assert after["requests"] - before["requests"] == 11
    assert after["batches"] - before["batches"] < 11


def raw_http(url: str, data: bytes, bound: float) -> socket.socket:
    """A socket to the server at `url` that has sent `data` (maybe nothing)."""
    host, port = url.rsplit("/", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=bound)
    if data:
        sock.sendall(data)
    return sock


def seconds_until_closed(sock: socket.socket, bound: float) -> float:
    """Seconds until the server closes `sock` (recv returns b""); `inf` past `bound`."""
    start = time.monotonic()
    sock.settimeout(bound)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return float("inf")
    finally:
        sock.close()
    return time.monotonic() - start


@pytest.mark.slow
def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(served):
    """After its response a kept-alive connection that sends nothing more is closed after
    KEEP_ALIVE_TIMEOUT_S (before: Serve's 90 s)."""
    from personal.distributed.serve import KEEP_ALIVE_TIMEOUT_S

    sock = raw_http(served, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 60)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
    waited = seconds_until_closed(sock, KEEP_ALIVE_TIMEOUT_S + 10)
    assert KEEP_ALIVE_TIMEOUT_S - 1 < waited < KEEP_ALIVE_TIMEOUT_S + 5, waited


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="no header-read timeout: Serve's proxy (uvicorn 0.54) "
                   "arms its only timer after a response and Ray 2.60 sets none")
def test_a_connection_that_never_sends_a_whole_request_is_closed(served):
    """A known gap, measured: a connection that sends nothing, or half a request line, is
    never timed out (still open after 25 s). Strict: it fails once a Ray or uvicorn upgrade
    closes them, to say the README and the module docstring can change."""
    socks = [raw_http(served, data, 30) for data in (b"", b"POST /v1/assi")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        waited = list(pool.map(lambda s: seconds_until_closed(s, 15), socks))
    assert max(waited) < 15, waited


@pytest.mark.slow
def test_killed_generator_replica_loses_no_request(world, served):
    """Kill the generator mid-load (0.15 s after the 5th answer): Serve starts a new
    replica; requests in flight get 503 and are retried (ClientOptions.retries), later ones
    wait for the new replica; every answer still equals offline."""
    from conftest import replica_name, replies_while_killing
    from personal.serving.http_eval import request_body

    examples = world.examples("test") * 4
    expected = offline(world, "per_user_lora", examples)
    replies, name = replies_while_killing(served + "/v1/assist",
                                          [request_body(e) for e in examples], "Generator")
    assert all(r.ok for r in replies), [r.body for r in replies if not r.ok][:2]
    assert [r.body["text"] for r in replies] == expected
    # The kill landed mid-load: requests then in flight got 503 and were retried, later ones
    # waited in Serve for the new replica (seconds); either way none was lost.
    assert max(r.seconds for r in replies) > 1.0
    assert replica_name("Generator") != name  # served by a new replica


@pytest.mark.slow
def test_shutdown_closes_the_port(served):
    from ray import serve

    port = int(served.rsplit(":", 1)[1])
    serve.shutdown()
    time.sleep(1)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def process_tree(pid: int) -> dict[int, tuple[str, str]]:
    """The live descendants of `pid` (from /proc): pid -> (start time, name). The start time
    tells a process from a later one that reuses its pid."""
    children: dict[int, list[int]] = {}
    info = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().rsplit(")", 1)
        except OSError:  # ended meanwhile
            continue
        fields = rest.split()
        if fields[0] != "Z":  # a zombie has ended; only its exit status is left
            child = int(stat.parent.name)
            children.setdefault(int(fields[1]), []).append(child)
            info[child] = (fields[19], name.split("(", 1)[1])
    tree, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            tree[child] = info[child]
            todo.append(child)
    return tree


def still_running(tree: dict[int, tuple[str, str]]) -> dict[int, str]:
    """The processes of `tree` that still run (same pid, same start time, not a zombie)."""
    left = {}
    for pid, (started, name) in tree.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and fields[19] == started:
            left[pid] = name
    return left


@pytest.mark.slow
def test_sigterm_stops_the_server_like_ctrl_c_and_leaves_no_process(world, tmp_path):
    """`personal serve` in a subprocess, then SIGTERM: it shuts Serve and Ray down as Ctrl-C
    does and exits 143; none of the processes it started still runs a few seconds later
    (before: Ray's handler aborted it, exit -6, and the dashboard and runtime-env agents
    were still running 30 s later)."""
    from personal.cli import _ray_temp
    from personal.serving.http_eval import wait_ready

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")  # a local test runtime
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "personal.cli", "serve", str(world.run.path),
                             "--strategy", "per_user_lora", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    tree = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}", 240)
        tree = process_tree(proc.pid)
        assert any("raylet" in name for _, name in tree.values()), tree  # Ray's, seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143, (tmp_path / "serve.log").read_text()[-3000:]
        deadline = time.monotonic() + 10
        while still_running(tree) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert still_running(tree) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in still_running(tree):  # ours: started by this test's server
            os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(_ray_temp(world.run.path, f"serve:{port}"), ignore_errors=True)
