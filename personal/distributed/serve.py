"""The Ray Serve app of a finished run: a router and a generator.

- Router (HTTP ingress, FastAPI): validates the request, maps its user to an adapter through
  the run's route table (`personal.serving.routing`), asks the generator, parses the answer's
  actions. Holds no model.
- Generator: the base model once, with a stack of `max_loaded_adapters` adapter slots filled
  on demand (least recently used evicted), answering `@serve.batch` batches of requests from
  many users in one mixed-adapter greedy decoding loop (`generate_routed`), with the run's own
  prompt format: a served answer is the offline answer.

    personal serve runs/main --strategy per_user_lora        # http://127.0.0.1:8000
    curl -s 127.0.0.1:8000/v1/assist -H 'Content-Type: application/json' \
         -d '{"user_id": "persona_003", "meta": null,
              "messages": [{"role": "user", "text": "Lights to 40 please."}]}'

With a strategy whose route depends on the request (moe_lora's learned router, retrieval's
index), a RequestRouter deployment sits between the two: it decides each batch of requests'
routes (mixture weights over experts) and prompt contexts (retrieved exchanges) in one call;
the response names the experts and weights used, and the exchanges retrieved.

Routes: POST /v1/assist, POST /v1/chat/completions (the OpenAI form, `personal.serving.
openai_api`), GET /healthz, GET /openapi.json. Status codes: 400 a body that is
not JSON (or nested too deeply, or with a key given twice), 403 a Host header naming another
server, 415 a body that is not application/json, 422 a bad request (`error` names the
field), 500 a request that failed alone (its batch was answered), 503 the generator failed or
is restarting (safe to retry: generation is greedy and has no side effects).

Connections: one left idle after a response is closed after `KEEP_ALIVE_TIMEOUT_S` (5 s;
Serve's default: 90 s). A connection that never completes its request line and headers
is not timed out: Serve's HTTP proxy (uvicorn 0.54) arms its only timer after a response,
and Ray 2.60 configures no header-read timeout. Serve on a trusted network.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request)
# as objects, in processes where the pickled class has no module globals to resolve names in.
import asyncio
import dataclasses
import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from ray import serve
import torch

from personal import __version__
from personal.config import load_config
from personal.distributed.runtime import config_payload, ray_runtime, worker_context
from personal.engine import (generate_routed, import_peft, inject_from_peft, inject_stacked_lora,
                             load_adapter_state)
from personal.data.validate import DuplicateKey, loads
from personal.errors import PersonalError, Terminated
from personal.eval.parser import parse_actions
from personal.experiment.pipeline import strategy_units, trained_strategies
from personal.serving.openai_api import (chat_completion, chat_schema, error_object,
                                         parse_chat_request)
from personal.serving.routing import (AdapterSlots, AssistRequest, Decision, RequestError,
                                      Route, RouteTable, ServeConfig, allowed_hosts,
                                      batch_groups, check_host, check_port, check_servable,
                                      decide, experts_of, host_of, parse_request,
                                      request_example, request_router, request_schema,
                                      route_table)
from personal.strategies.registry import get_strategy, servable_strategies

APP_NAME = "personal"


# --- The generator, without Ray ----------------------------------------------------------------

def stack_model(ctx, run_path: Path, folders: Sequence[str], size: int):
    """The run's base model (not a copy: the generator holds it once) with a `size`-slot stack
    shaped like the first adapter; a run without adapters (base) gets one unused slot."""
    model = ctx.base[0]
    if not folders:
        lora = ctx.cfg.lora
        return inject_stacked_lora(model, 1, rank=lora.rank, alpha=lora.alpha,
                                   target_modules=lora.target_modules).eval()
    return inject_from_peft(model, [run_path / folders[0]] * size).eval()


class AdapterGenerator:
    """Answers batches of requests, each with its route, from one model and its adapter slots.

    One batch may span more adapters than slots: it is answered in passes (`batch_groups`)."""

    def __init__(self, payload: dict, run_path: str | Path, folders: Sequence[str],
                 scfg: ServeConfig):
        torch.set_num_threads(scfg.torch_threads)
        ctx = worker_context(payload, run_path)
        if ctx.cfg.generation.do_sample:
            raise PersonalError("serving decodes greedily: the run has generation.do_sample=true")
        self.run_path = Path(run_path)
        self.allowed = set(folders)  # the only folders ever read: the route table's
        size = max(1, min(scfg.max_loaded_adapters, len(folders)))
        self.model, self.tokenizer = stack_model(ctx, self.run_path, list(folders), size), \
            ctx.base[1]
        self.slots = AdapterSlots(size)
        self.fmt, self.gen = ctx.prompt_format(), ctx.cfg.generation
        self.counts = {"batches": 0, "passes": 0, "requests": 0}
        self._lock = threading.Lock()  # slots and the stack's routing are shared state

    def answer(self, requests: Sequence[AssistRequest], routes: Sequence[Route],
               contexts: Optional[Sequence[Optional[str]]] = None) -> list[dict]:
        """One result per request, in order: {"text": ...} or {"error": ...} for a request
        whose prompt cannot fit (the others are answered). `contexts`: each request's text
        beyond the run's format (its request router's retrieved block; None: none)."""
        contexts = list(contexts) if contexts is not None else [None] * len(requests)
        with self._lock:
            self.counts["batches"] += 1
            self.counts["requests"] += len(requests)
            out: list[dict] = [{} for _ in requests]
            prompts = [self._prompt(r, out[i], contexts[i]) for i, r in enumerate(requests)]
            ok = [i for i, p in enumerate(prompts) if p is not None]
            for group in batch_groups([routes[i] for i in ok], self.slots.size):
                rows = [ok[j] for j in group]
                for i, result in zip(rows, self._answer_rows(prompts, routes, rows)):
                    out[i] = result
            return out

    def _answer_rows(self, prompts: list, routes: Sequence[Route], rows: list[int]) -> list[dict]:
        """One pass for `rows`; if it fails, each row alone, so one request that breaks the
        pass fails alone and every other request of the batch is still answered."""
        try:
            texts = self._pass([prompts[i] for i in rows], [routes[i] for i in rows])
            return [{"text": t} for t in texts]
        except Exception:  # noqa: BLE001 - find the row at fault
            if len(rows) == 1:
                raise
        out = []
        for i in rows:
            try:
                out.append({"text": self._pass([prompts[i]], [routes[i]])[0]})
            except Exception as err:  # noqa: BLE001 - this request alone fails
                out.append({"error": f"this request could not be answered "
                                     f"({type(err).__name__})", "failed": True})
        return out

    def _prompt(self, req: AssistRequest, result: dict,
                context: Optional[str] = None) -> Optional[list[int]]:
        """The offline prompt of the request, or None with `result["error"]` set when the
        user's last message does not fit the model's context (the format drops history
        oldest first, and would drop that message too: an answer to nothing)."""
        example, n = request_example(req), self.gen.max_new_tokens
        last = f"messages[{len(req.messages) - 1}].text"
        fmt = self.fmt if context is None else \
            dataclasses.replace(self.fmt, extra_context=lambda e: context)
        try:
            ids = fmt.prompt_ids(self.tokenizer, example, n)
            bare = fmt.prompt_ids(self.tokenizer, dataclasses.replace(example, history=[]), n)
        except PersonalError as err:  # not even the system prompt fits
            result.update(error=f"{last}: {err}", field=last)
            return None
        if len(ids) == len(bare):
            result.update(error=f"{last}: too long for the model's context "
                                f"({self.fmt.max_len} tokens with {n} to generate)", field=last)
            return None
        return ids

    def _pass(self, prompts: list[list[int]], routes: list[Route]) -> list[str]:
        self.counts["passes"] += 1
        needed = [f for r in routes for f in r.folders]
        outside = sorted(set(needed) - self.allowed)
        if outside:
            raise PersonalError(f"adapters outside this app's route table: {outside[:3]}")
        slot_of, loads = self.slots.assign(needed)
        for folder, slot in loads:
            self._load(folder, slot)
        gen = dataclasses.replace(self.gen, batch_size=len(prompts))  # one decoding loop
        return generate_routed(self.model, self.tokenizer, prompts, self._rows(routes, slot_of),
                               gen, fmt=self.fmt)

    def _rows(self, routes: list[Route], slot_of: dict[str, int]) -> list:
        """Slot indices (-1: base), or weight vectors over the slots when a route mixes."""
        if not any(r.is_mixture for r in routes):
            return [slot_of[r.folders[0]] if r.adapters else -1 for r in routes]
        rows = []
        for r in routes:
            weights = [0.0] * self.slots.size
            for folder, w in r.adapters:
                weights[slot_of[folder]] += w
            rows.append(weights)
        return rows

    def _load(self, folder: str, slot: int) -> None:
        try:
            load_adapter_state(self.model, slot, import_peft([self.run_path / folder]).adapter(0))
        except Exception:
            self.slots.drop(folder)
            raise

    def stats(self) -> dict[str, Any]:
        """Counters: batches, passes, requests, adapter loads and evictions, slots in use."""
        return {**self.counts, "slots": self.slots.size, "loaded": len(self.slots.held),
                "adapter_loads": self.slots.loads, "evictions": self.slots.evictions}


# --- Deployments -------------------------------------------------------------------------------

@serve.deployment(name="Generator")
class Generator:
    """The generator replica: `answer` is batched across concurrent requests (any users)."""

    def __init__(self, payload: dict, run_path: str, folders: list[str], scfg: dict):
        cfg = ServeConfig(**scfg)
        self.core = AdapterGenerator(payload, run_path, folders, cfg)
        self.answer.set_max_batch_size(cfg.max_batch_size)
        self.answer.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def answer(self, items: list[tuple[AssistRequest, Route, Optional[str]]]
                     ) -> list[dict]:
        requests, routes, contexts = zip(*items)
        # Decoding runs on the replica's event loop, not in a thread: the decoding loop holds
        # the GIL most of the time, so a thread only slowed the loop that fills the next batch
        # (smoke world, 32 clients on 2 CPUs: batches of 2.1 vs 10.7 requests, 13 vs 32 req/s).
        # Serve runs user code on its own loop, so health checks still answer meanwhile.
        return self.core.answer(list(requests), list(routes), list(contexts))

    def stats(self) -> dict[str, Any]:
        return self.core.stats()


@serve.deployment(name="RequestRouter")
class RequestRouter:
    """The strategy's request router (moe_lora's learned router, retrieval's index), in
    front of the generator: each batch of requests gets its routes and prompt contexts in
    one call (one MiniLM batch). Holds no generator."""

    def __init__(self, payload: dict, run_path: str, strategy: str, scfg: dict):
        cfg = ServeConfig(**scfg)
        torch.set_num_threads(cfg.torch_threads)
        self.router = request_router(worker_context(payload, run_path), strategy)
        self.decide.set_max_batch_size(cfg.max_batch_size)
        self.decide.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def decide(self, requests: list[AssistRequest]) -> list[Decision]:
        return decide(None, self.router, requests)


# No /docs or /redoc pages: FastAPI's load their scripts from a public CDN, a blank page on a
# machine without internet; the schema itself is at /openapi.json.
api = FastAPI(title="personal: personalized smart-home assistant", version=__version__,
              description="Answers a user's message with that user's adapter of a finished "
                          "run (its strategy's routing), greedy, batched across users.",
              docs_url=None, redoc_url=None)

#: Seconds /healthz waits for the generator: a restarting replica answers 503 at once
#: instead of holding the health check for the ~10 s of its restart.
HEALTH_TIMEOUT_S = 2.0


class Expert(BaseModel):
    """An adapter the answer used and its weight in the mixture."""

    name: str
    weight: float


class AssistResponse(BaseModel):
    """The assistant's turn."""

    text: str
    actions: dict[str, dict[str, Any]]
    adapter: str
    experts: list[Expert]
    retrieved: Optional[list[dict[str, int]]] = None
    """The exchanges (session, turn of the user's training data) the prompt carried."""
    latency_ms: float


class ErrorResponse(BaseModel):
    error: str
    field: Optional[str] = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class OpenAIErrorResponse(BaseModel):
    """The OpenAI API's error body: `param` names the field at fault."""

    error: OpenAIErrorDetail


def _error(status: int, message: str, field: Optional[str] = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def _document_limits(cfg: ServeConfig) -> None:
    """Put this app's limits (not the defaults) into the OpenAPI request schemas."""
    api.openapi_schema = None
    schema = api.openapi()
    for path, body_schema in (("/v1/assist", request_schema), ("/v1/chat/completions",
                                                               chat_schema)):
        body = schema["paths"][path]["post"]["requestBody"]
        body["content"]["application/json"]["schema"] = body_schema(cfg)


def openai_error(response: JSONResponse) -> JSONResponse:
    """An /v1/assist error response in the OpenAI API's error shape, same status."""
    body = json.loads(response.body)
    return JSONResponse(error_object(response.status_code, body["error"], body.get("field")),
                        status_code=response.status_code)


# serve.ingress pickles the class when it decorates it: what it calls is defined above.
@serve.deployment(name="Router")
@serve.ingress(api)
class Router:
    """HTTP ingress: validation, user -> route, the generator's answer, parsed actions."""

    def __init__(self, generator, table: RouteTable, scfg: dict, info: dict,
                 hosts: Optional[Sequence[str]] = None, request_router=None):
        self.generator, self.table, self.info = generator, table, info
        self.request_router = request_router
        self.cfg = ServeConfig(**scfg)
        self.hosts = None if hosts is None else set(hosts)
        _document_limits(self.cfg)

    def _refused(self, request: Request, body_expected: bool) -> Optional[JSONResponse]:
        """403 for a Host header this server does not answer to (a web page's cross-origin
        POST to a loopback server names its own host), 415 for a body that is not JSON."""
        if self.hosts is not None and host_of(request.headers.get("host", "")) not in self.hosts:
            return _error(403, "Host header names another server; this one answers "
                               f"{', '.join(sorted(self.hosts))} only", "host")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body_expected and ctype != "application/json":
            return _error(415, f"Content-Type must be application/json, got {ctype or 'none'}",
                          "content-type")
        return None

    async def _body(self, request: Request) -> tuple[Any, Optional[JSONResponse]]:
        """(the parsed JSON body, None) or (None, the refusal: 403, 415 or 400)."""
        refused = self._refused(request, body_expected=True)
        if refused is not None:
            return None, refused
        try:
            return loads(await request.body()), None  # a key given twice is refused
        except RecursionError:
            return None, _error(400, "body: JSON nested too deeply", "body")
        except DuplicateKey as err:
            return None, _error(400, f"body: key {str(err)!r} appears twice in one object",
                                "body")
        except ValueError as err:  # malformed JSON, not UTF-8
            return None, _error(400, f"body: not valid JSON ({err})", "body")

    async def _answer(self, req: AssistRequest, start: float):
        """The answer record of a valid request, or the error response (500, 503, 422)."""
        try:
            if self.request_router is not None:
                decision = await self.request_router.decide.remote(req)
            else:
                decision = decide(self.table, None, [req])[0]
        except Exception as err:  # noqa: BLE001 - a dead or restarting replica: retryable
            return _error(503, f"request router unavailable ({type(err).__name__}); retry")
        try:
            result = await self.generator.answer.remote(
                (req, decision.route, decision.context))
        except Exception as err:  # noqa: BLE001 - a dead or restarting replica: retryable
            return _error(503, f"generator unavailable ({type(err).__name__}); retry")
        if result.get("failed"):
            return _error(500, result["error"])
        if "error" in result:
            return _error(422, result["error"], result.get("field"))
        return {"text": result["text"], "actions": parse_actions(result["text"]),
                "adapter": decision.route.label,
                "experts": decision.info.get("experts", experts_of(decision.route)),
                "retrieved": decision.info.get("retrieved"),
                "latency_ms": (time.perf_counter() - start) * 1000}

    @api.post("/v1/assist", response_model=AssistResponse,
              responses={code: {"model": ErrorResponse}
                         for code in (400, 403, 415, 422, 500, 503)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": request_schema(ServeConfig())}}}})
    async def assist(self, request: Request):
        """The assistant's next turn for `user_id`, given the dialogue so far."""
        start = time.perf_counter()
        body, refused = await self._body(request)
        if refused is not None:
            return refused
        try:
            req = parse_request(body, self.cfg)
        except RequestError as err:
            return _error(422, str(err), err.field)
        return await self._answer(req, start)

    @api.post("/v1/chat/completions",
              responses={code: {"model": OpenAIErrorResponse}
                         for code in (400, 403, 415, 422, 500, 503)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": chat_schema(ServeConfig())}}}})
    async def chat_completions(self, request: Request):
        """The OpenAI chat-completions form of /v1/assist (for the `openai` client and the
        tools built on it): `user` (else `model`) names the user, `metadata` carries the
        session context; the answer is /v1/assist's for the same turn, with its routing
        under `personal`."""
        start = time.perf_counter()
        body, refused = await self._body(request)
        if refused is not None:
            return openai_error(refused)
        try:
            req, model = parse_chat_request(body, self.cfg)
        except RequestError as err:
            return openai_error(_error(422, str(err), err.field))
        answer = await self._answer(req, start)
        if isinstance(answer, JSONResponse):
            return openai_error(answer)
        return chat_completion(model, answer)

    @api.get("/healthz")
    async def healthz(self, request: Request):
        """Ready when the generator answers: the served strategy, run and counters."""
        refused = self._refused(request, body_expected=False)
        if refused is not None:
            return refused
        try:
            stats = await asyncio.wait_for(self.generator.stats.remote(), HEALTH_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - dead, restarting or too slow to answer
            return _error(503, f"generator unavailable ({type(err).__name__})")
        return {"status": "ok", **self.info, "max_batch_size": self.cfg.max_batch_size,
                "max_loaded_adapters": self.cfg.max_loaded_adapters, "generator": stats}


# --- Building and running the app --------------------------------------------------------------

def run_config(run_path: Path, overrides: Sequence[str] = ()):
    """The run's resolved config (config.yaml), with dotted overrides."""
    if not (run_path / "config.yaml").is_file():
        raise PersonalError(f"{run_path}: not a run directory (no config.yaml)")
    return load_config(run_path / "config.yaml", list(overrides))


def served_strategy(ctx, name: Optional[str]) -> str:
    """`name` (servable, and trained in the run unless it trains nothing), else the one
    servable strategy the run trained."""
    run_path = ctx.run.path
    trained = trained_strategies(run_path)
    if name is not None:
        check_servable(name)
        if name not in trained and any(strategy_units(ctx, name)):
            raise PersonalError(f"{run_path}: strategy {name} was not trained here (trained: "
                                f"{', '.join(trained) or 'none'})")
        return name
    servable = [s for s in trained if s in servable_strategies()]
    if len(servable) != 1:
        raise PersonalError(f"{run_path}: {len(servable)} servable strategies trained "
                            f"({', '.join(servable) or 'none'}): choose one with --strategy")
    return servable[0]


def build_app(run_path: str | Path, scfg: ServeConfig, overrides: Sequence[str] = (),
              host: str = "127.0.0.1"):
    """The bound app (router -> generator) of a finished run; checks everything it can
    before Ray starts (strategy, adapters on disk, settings)."""
    scfg.check()
    run = Path(run_path).resolve()
    cfg = run_config(run, overrides)
    payload = config_payload(cfg)
    ctx = worker_context(payload, run)
    strategy = served_strategy(ctx, scfg.strategy)
    table = route_table(ctx, strategy)
    scfg = dataclasses.replace(scfg, strategy=strategy)
    gpus = 1.0 if cfg.model.device.startswith("cuda") else 0.0
    generator = Generator.options(
        num_replicas=scfg.generator_replicas,
        # room for the batch being decoded and the next one filling
        max_ongoing_requests=2 * scfg.max_batch_size,
        ray_actor_options={"num_cpus": scfg.generator_cpus, "num_gpus": gpus},
    ).bind(payload, str(run), table.folders(), dataclasses.asdict(scfg))
    # the run's folder name, not its absolute path: /healthz is for any client of the API
    info = {"run": run.name, "fingerprint": ctx.fingerprint, **table.summary()}
    router = None
    if get_strategy(strategy).serving.request_router is not None:
        # no CPU reserved: it embeds a batch of messages (~10 ms) between the generator's
        # decoding loops, which hold the reserved cores
        router = RequestRouter.options(
            max_ongoing_requests=2 * scfg.max_batch_size,
            ray_actor_options={"num_cpus": 0}).bind(payload, str(run), strategy,
                                                     dataclasses.asdict(scfg))
        info["request_router"] = True
    return Router.options(max_ongoing_requests=scfg.router_max_ongoing,
                          ray_actor_options={"num_cpus": 0}).bind(
        generator, table, dataclasses.asdict(scfg), info, allowed_hosts(host), router)


#: Seconds an idle connection stays open after its last response (uvicorn's
#: timeout_keep_alive; Serve's default is 90): idle clients cannot hold sockets for long,
#: and a client that pauses longer simply reconnects.
KEEP_ALIVE_TIMEOUT_S = 5


def start_app(app, host: str, port: int):
    """Start Serve's HTTP proxy on host:port and deploy `app` at /; returns its handle."""
    if not 0 < port < 65536:
        raise PersonalError(f"--port must be in 1..65535, got {port}")
    serve.start(http_options={"host": host, "port": port,
                              "keep_alive_timeout_s": KEEP_ALIVE_TIMEOUT_S})
    return serve.run(app, name=APP_NAME, route_prefix="/")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises `Terminated` (a KeyboardInterrupt), so `kill` takes Ctrl-C's
    path: serve.shutdown, then ray.shutdown. Enter it after ray.init, which installs Ray's
    own handler: that one exits at once (SIGABRT) and left the dashboard and runtime-env
    agents running as orphans (measured: still alive 30 s later; Ctrl-C leaves nothing).

    After one SIGTERM the next are ignored, also during ray.shutdown after this block: they
    must not cut the shutdown short. Without one, the previous handler is back on exit.
    Only the main thread may set handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fired.append(signum)
        raise Terminated()

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if not fired:
            signal.signal(signal.SIGTERM, before)


def serve_run(run_path: str | Path, scfg: ServeConfig, host: str = "127.0.0.1",
              port: int = 8000, allow_remote: bool = False, address: Optional[str] = None,
              temp_dir: Optional[str] = None, overrides: Sequence[str] = (),
              on_ready: Callable[[str], None] = print, wait: bool = True) -> None:
    """Serve a run until interrupted (or, with `wait=False` on a cluster, deploy and return:
    the app keeps running there). A local runtime is shut down on exit; on a cluster only
    this app is deleted."""
    check_host(host, allow_remote)
    check_port(host, port)  # before Ray starts: a bad or busy port costs no start-up
    app = build_app(run_path, scfg, overrides, host)
    on_cluster = bool(address or os.environ.get("RAY_ADDRESS"))
    if not wait and not on_cluster:
        raise PersonalError("deploying without waiting needs a cluster (--address or "
                            "RAY_ADDRESS): a local runtime ends with this process")
    with ray_runtime(address, temp_dir=temp_dir), sigterm_as_interrupt():
        start_app(app, host, port)
        on_ready(f"http://{host}:{port}")
        if not wait:
            return
        try:
            while True:
                time.sleep(3600)
        finally:
            if on_cluster:
                serve.delete(APP_NAME)  # other apps on the cluster keep running
            else:
                serve.shutdown()
