"""Serving without Ray: which adapter answers a user, which stack slot holds which adapter, and
what a valid request is.

- The route table maps a user id to a `Route` (run-relative adapter folders and weights; none:
  the base model) by the run's strategy, through the serving form it registered
  (`personal.strategies.routes`), exactly as its offline predictor routes the user's turns.
  A user id is only ever a key of that table, never part of a path: `../../etc` is an
  unknown user and gets the fallback (the unified adapter when the run has it, else the base).
- `AdapterSlots` keeps a bounded set of adapters loaded in the generator's stack, evicting the
  least recently used one a batch does not need.
- `parse_request` checks a request body and names the first bad field.

    table = route_table(ctx, "per_user_lora")
    table.route("persona_003").label        # 'per_user_lora/persona_003'
"""
from __future__ import annotations

import ipaddress
import socket
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from personal.data.schema import META_FIELDS, ROLES, Example, Message
from personal.data.validate import text_problem
from personal.errors import PersonalError
from personal.strategies.registry import get_strategy, servable_strategies, strategy_config
from personal.strategies.routes import (BASE, CONFIG_FILE, UNIFIED, Decision,  # noqa: F401
                                        Route, RouteTable, experts_of)

WEIGHTS_FILE = "adapter_model.safetensors"
PROMPTS_FILE = "personal_prompts.safetensors"


@dataclass
class ServeConfig:
    """How an app serves a run (the run's own config still decides the model, the prompt
    format and generation)."""

    strategy: Optional[str] = None
    """The strategy served (one per app: a stack holds one kind of adapter); None: the one
    strategy the run trained."""
    max_loaded_adapters: int = 16
    """Stack slots of the generator: adapters resident at once, least recently used evicted;
    a batch needing more is answered in several passes."""
    max_batch_size: int = 16
    """Requests (of any users) decoded together by `@serve.batch`; 1: one request per batch."""
    batch_wait_timeout_s: float = 0.01
    """How long a batch waits to fill before it runs."""
    max_messages: int = 32
    """Most messages a request may carry (the prompt keeps the run's last
    `data.history_messages` of them)."""
    max_message_chars: int = 2000
    """Longest message text accepted, in characters."""
    max_user_id_chars: int = 128
    """Longest user id accepted."""
    generator_replicas: int = 1
    """Generator replicas (each holds the base model once)."""
    generator_cpus: float = 1.0
    """CPUs reserved per generator replica (a GPU too when model.device is cuda)."""
    torch_threads: int = 1
    """torch threads per generator replica (on a shared CPU, one per reserved core)."""
    router_max_ongoing: int = 256
    """Concurrent requests one router replica accepts (HTTP clients beyond wait in Serve)."""

    def check(self) -> None:
        """PersonalError naming the first bad setting."""
        for name in ("max_loaded_adapters", "max_batch_size", "max_messages",
                     "max_message_chars", "max_user_id_chars", "generator_replicas",
                     "torch_threads", "router_max_ongoing"):
            if getattr(self, name) < 1:
                raise PersonalError(f"serve.{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_timeout_s < 0 or self.generator_cpus < 0:
            raise PersonalError("serve.batch_wait_timeout_s and serve.generator_cpus must be "
                                ">= 0")
        if self.strategy is not None:
            check_servable(self.strategy)


def serve_config(**given) -> ServeConfig:
    """A ServeConfig from command-line values; None (not given) keeps the dataclass default,
    so the defaults live only in ServeConfig."""
    return ServeConfig(**{k: v for k, v in given.items() if v is not None})


# --- Routes ------------------------------------------------------------------------------------

def adapter_kind(run_path: Path, folders: Sequence[str]) -> str:
    """`lora`, `prompt` or `none` for the folders; a PersonalError when one is missing (not
    trained) or the folders mix kinds (their key sets differ: one stack cannot hold both)."""
    if not folders:
        return "none"
    missing = [f for f in folders if not all((run_path / f / n).is_file()
                                             for n in (CONFIG_FILE, WEIGHTS_FILE))]
    if missing:
        raise PersonalError(f"{run_path}: adapters not trained yet: {missing[:3]} "
                            f"({len(missing)} missing); run `personal train` first")
    kinds = {"prompt" if (run_path / f / PROMPTS_FILE).is_file() else "lora" for f in folders}
    if len(kinds) > 1:
        raise PersonalError(f"{run_path}: the routes mix LoRA adapters and soft-prompt adapters; "
                            "one app serves one kind (serve one strategy per app)")
    return kinds.pop()


def check_servable(strategy: str) -> None:
    """A PersonalError when `strategy` is unknown or cannot be served, with its reason."""
    spec = get_strategy(strategy)
    if not spec.serving.servable:
        raise PersonalError(f"strategy {strategy!r} cannot be served: {spec.serving.reason} "
                            f"(servable: {', '.join(servable_strategies())})")


def route_table(ctx, strategy: str) -> RouteTable:
    """The route table of `strategy` in the run of `ctx`, from its registered serving form;
    checks that every adapter it names was trained and that they are one kind."""
    check_servable(strategy)
    spec = get_strategy(strategy)
    table = spec.serving.routes(ctx, strategy_config(spec, ctx.cfg.strategy.get(strategy)))
    kind = adapter_kind(ctx.run.path, table.folders())
    if kind == "prompt" and any(r.is_mixture for r in table.users.values()):
        raise PersonalError(f"{strategy}: mixtures of soft-prompt adapters cannot be served")
    table.kind = kind
    return table


def request_router(ctx, strategy: str):
    """The strategy's request router (`decide(examples) -> [Decision]`), loaded from the run,
    or None when its route table alone decides."""
    spec = get_strategy(strategy)
    if spec.serving.request_router is None:
        return None
    return spec.serving.request_router(ctx, strategy_config(spec, ctx.cfg.strategy.get(strategy)))


def decide(table: RouteTable, router, requests: Sequence["AssistRequest"]) -> list[Decision]:
    """Each request's Decision: from the request router when there is one, else the user's
    route in the table (what the response reports: the experts used)."""
    if router is not None:
        return list(router.decide([request_example(r) for r in requests]))
    out = []
    for r in requests:
        route = table.route(r.user_id)
        out.append(Decision(route, None, {"experts": experts_of(route)}))
    return out


# --- Stack slots -------------------------------------------------------------------------------

class AdapterSlots:
    """Which adapter each slot of a `size`-slot stack holds. Loading into a full stack evicts
    the least recently used adapter that the batch being placed does not need."""

    def __init__(self, size: int):
        if size < 1:
            raise PersonalError(f"a stack needs at least one slot, got {size}")
        self.size = size
        self.held: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self.loads = 0
        self.evictions = 0

    def assign(self, needed: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, int]]]:
        """(adapter -> slot for every needed adapter, (adapter, slot) pairs to load now)."""
        needed = list(dict.fromkeys(needed))
        if len(needed) > self.size:
            raise PersonalError(f"{len(needed)} adapters at once exceed the {self.size} slots")
        loads = []
        for name in needed:
            if name in self.held:
                self.held.move_to_end(name)
                continue
            free = sorted(set(range(self.size)) - set(self.held.values()))
            if free:
                slot = free[0]
            else:
                victim = next(a for a in self.held if a not in needed)
                slot = self.held.pop(victim)
                self.evictions += 1
            self.held[name] = slot
            loads.append((name, slot))
            self.loads += 1
        return {a: self.held[a] for a in needed}, loads

    def drop(self, name: str) -> None:
        """Forget an adapter (its load failed: the slot holds nothing usable)."""
        self.held.pop(name, None)


def batch_groups(routes: Sequence[Route], size: int) -> list[list[int]]:
    """Row indices in groups whose routes together need at most `size` adapters (first fit,
    rows in order): each group is one pass over a `size`-slot stack."""
    groups: list[tuple[set[str], list[int]]] = []
    for i, route in enumerate(routes):
        need = set(route.folders)
        if len(need) > size:
            raise PersonalError(f"a mixture of {len(need)} adapters needs "
                                f"max_loaded_adapters >= {len(need)}, got {size}")
        for have, rows in groups:
            if len(have | need) <= size:
                have.update(need)
                rows.append(i)
                break
        else:
            groups.append((need, [i]))
    return [rows for _, rows in groups]


# --- Requests ----------------------------------------------------------------------------------

class RequestError(PersonalError):
    """A bad request; `field` names where (`messages[2].role`, `meta.weather`, `body`)."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


@dataclass(frozen=True)
class AssistRequest:
    """A valid request: the user, the session context (None: unknown) and the dialogue so far,
    ending with the user's message."""

    user_id: str
    meta: Optional[dict[str, str]]
    messages: tuple[Message, ...] = field(default_factory=tuple)


REQUEST_FIELDS = ("user_id", "meta", "messages")
MESSAGE_FIELDS = ("role", "text")


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (for messages)."""
    if value is None:
        return "null"
    for py, name in ((bool, "boolean"), (str, "string"), ((int, float), "number"),
                     (list, "array"), (dict, "object")):
        if isinstance(value, py):
            return name
    return type(value).__name__


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _object(value: Any, where: str, allowed: Sequence[str], required: Sequence[str]) -> dict:
    if not isinstance(value, dict):
        raise RequestError(where, f"must be an object, got {json_type(value)}")
    prefix = "" if where == "body" else f"{where}."
    for key in value:
        if key not in allowed:
            raise RequestError(f"{prefix}{str(key)[:60]}",
                               f"unknown field (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise RequestError(f"{prefix}{key}", "is required")
    return value


def _string(value: Any, where: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise RequestError(where, f"must be a string, got {json_type(value)}")
    if len(value) > max_chars:
        raise RequestError(where, f"is {len(value)} characters long, the limit is {max_chars}")
    return value


def _text(value: Any, where: str, cfg: ServeConfig) -> str:
    """A message text the tokenizer can take: non-blank, no control characters (but tabs
    and line breaks), no lone surrogates (which no encoder can encode)."""
    text = _string(value, where, cfg.max_message_chars)
    if not text.strip():
        raise RequestError(where, "must not be empty or only spaces")
    problem = text_problem(text)
    if problem:
        raise RequestError(where, problem)
    return text


def _user_id(value: Any, cfg: ServeConfig) -> str:
    user_id = _string(value, "user_id", cfg.max_user_id_chars)
    if not user_id or any(ord(c) < 32 or ord(c) == 127 for c in user_id):
        raise RequestError("user_id", "must be a non-empty string without control characters")
    if user_id != user_id.strip() or any(unicodedata.category(c) in ("Cf", "Zl", "Zp")
                                         for c in user_id):
        # " persona_000" or a zero-width space would silently get the fallback adapter
        raise RequestError("user_id", "must not carry surrounding spaces or invisible "
                                      "characters")
    return user_id


def _meta(value: Any) -> Optional[dict[str, str]]:
    if value is None:
        return None
    meta = _object(value, "meta", list(META_FIELDS), [])
    for key, v in meta.items():
        allowed = META_FIELDS[key]
        if not isinstance(v, str) or v not in allowed:
            raise RequestError(f"meta.{key}", f"must be one of {', '.join(allowed)}, "
                                              f"got {_short(v)}")
    return dict(meta)


def _messages(value: Any, cfg: ServeConfig) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise RequestError("messages", f"must be an array, got {json_type(value)}")
    if not value:
        raise RequestError("messages", "must hold at least one message (the user's)")
    if len(value) > cfg.max_messages:
        raise RequestError("messages", f"holds {len(value)} messages, the limit is "
                                       f"{cfg.max_messages}")
    out = []
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        item = _object(item, where, MESSAGE_FIELDS, MESSAGE_FIELDS)
        role = item["role"]
        if role not in ROLES:
            raise RequestError(f"{where}.role", f"must be one of {', '.join(ROLES)}, "
                                                f"got {_short(role)}")
        out.append(Message(role, _text(item["text"], f"{where}.text", cfg)))
    if out[-1].role != "user":
        raise RequestError(f"messages[{len(out) - 1}].role",
                           f"the last message must be the user's, got {out[-1].role!r}")
    return tuple(out)


def parse_request(body: Any, cfg: ServeConfig) -> AssistRequest:
    """The request in `body` (parsed JSON), or a RequestError naming the first bad field:
    unknown fields, wrong types, too many or too long messages, context values outside the
    schema, a dialogue that does not end with the user's message."""
    body = _object(body, "body", REQUEST_FIELDS, ("user_id", "messages"))
    return AssistRequest(_user_id(body["user_id"], cfg), _meta(body.get("meta")),
                         _messages(body["messages"], cfg))


def request_example(req: AssistRequest) -> Example:
    """The request as the Example offline generation would answer: its messages are the
    history, its meta the session context (the prompt format keeps the last N messages)."""
    return Example(persona_id=req.user_id, session_id=-1, turn_index=len(req.messages),
                   meta=None if req.meta is None else dict(req.meta),
                   history=list(req.messages), target="")


def request_schema(cfg: ServeConfig) -> dict[str, Any]:
    """JSON schema of a request body (for the OpenAPI description)."""
    meta = {"type": ["object", "null"], "additionalProperties": False,
            "description": "Session context; null or absent: unknown.",
            "properties": {k: {"type": "string", "enum": list(v)} for k, v in META_FIELDS.items()}}
    message = {"type": "object", "additionalProperties": False, "required": list(MESSAGE_FIELDS),
               "properties": {"role": {"type": "string", "enum": list(ROLES)},
                              "text": {"type": "string", "minLength": 1, "pattern": r"\S",
                                       "maxLength": cfg.max_message_chars}}}
    return {"type": "object", "additionalProperties": False, "required": ["user_id", "messages"],
            "properties": {
                "user_id": {"type": "string", "minLength": 1,
                            "maxLength": cfg.max_user_id_chars,
                            # no control characters, no surrounding spaces (the server
                            # also refuses invisible format characters such as U+200B)
                            "pattern": r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*"
                                       r"[^\s\x00-\x1f\x7f])?$",
                            "description": "Routes to the user's adapter; unknown ids get "
                                           "the fallback."},
                "meta": meta,
                "messages": {"type": "array", "items": message, "minItems": 1,
                             "maxItems": cfg.max_messages,
                             # "the last item's role is user" has no JSON-schema keyword
                             # (none addresses the last item): the description says it
                             "description": "The dialogue so far, oldest first, ending with "
                                            "the user's message (the last item's role must "
                                            "be user; a request whose last message does not "
                                            "fit the model's context is refused)."}}}


# --- Binding -----------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


def allowed_hosts(host: str) -> Optional[tuple[str, ...]]:
    """Host header names a server bound to `host` answers: the loopback names when it is
    bound to loopback (a web page's cross-origin request to 127.0.0.1 names another host
    and is refused), None (any) when bound to a reachable address with --allow-remote."""
    return LOOPBACK_NAMES if is_loopback(host) else None


def host_of(header: str) -> str:
    """The host name of a Host header value (`127.0.0.1:8000` -> `127.0.0.1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (a second server would split its traffic: Serve's
    proxy binds with SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_port(host: str, port: int) -> None:
    """A PersonalError when `port` is out of range or already served, before Ray starts."""
    if not 0 < port < 65536:
        raise PersonalError(f"--port must be in 1..65535, got {port}")
    if not port_free(host, port):
        raise PersonalError(f"--port {port}: {host}:{port} is already in use (another server "
                            "would split its traffic); choose another port")


def check_host(host: str, allow_remote: bool) -> None:
    """Binding anything but loopback needs `allow_remote`: the API has no authentication."""
    if not is_loopback(host) and not allow_remote:
        raise PersonalError(f"--host {host} is reachable from other machines and the API has "
                            "no authentication: pass --allow-remote to bind it anyway")
