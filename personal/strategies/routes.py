"""Route tables: which adapters answer a user, as a strategy's serving form says.

A strategy that can be served registers `servable(routes)`, where `routes(ctx, strategy_cfg)`
returns a `RouteTable` mapping each user id the run knows to a `Route` (run-relative adapter
folders and weights; none: the base model), exactly as its offline predictor routes the
user's turns. A user id is only ever a key of that table, never part of a path: `../../etc`
is an unknown user and gets the fallback.

A strategy whose route depends on the request itself (a learned router reading the message,
retrieval building the prompt) also registers `request_router(ctx, strategy_cfg)`: an object
whose `decide(examples) -> [Decision]` gives each request its route and prompt context,
exactly as its offline predictor decides each turn.

    table = route_table(ctx, "per_user_lora")    # personal.serving.routing
    table.route("persona_003").label        # 'per_user_lora/persona_003'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

#: The unified adapter's folder in a run (the reference every fallback names).
UNIFIED = "adapters/unified_lora"
CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class Route:
    """The adapters answering a user: (run-relative folder, weight) pairs; none: the base."""

    adapters: tuple[tuple[str, float], ...] = ()
    mixture: bool = False
    """Decode as a weight vector over the stack even when one adapter has weight 1 (a
    router's soft route, whose offline prediction is a weight vector: the same arithmetic)."""

    @classmethod
    def one(cls, folder: str) -> "Route":
        return cls(((folder, 1.0),))

    @property
    def folders(self) -> list[str]:
        return [f for f, _ in self.adapters]

    @property
    def is_mixture(self) -> bool:
        return self.mixture or len(self.adapters) > 1 or any(w != 1.0 for _, w in self.adapters)

    @property
    def label(self) -> str:
        """What the response names: `per_user_lora/persona_003`, `unified_lora`, `base`, or a
        mixture `a*0.7+b*0.3`."""
        if not self.adapters:
            return "base"
        names = [f.removeprefix("adapters/") for f in self.folders]
        if not self.is_mixture:
            return names[0]
        return "+".join(f"{n}*{w:g}" for n, (_, w) in zip(names, self.adapters))


BASE = Route()


@dataclass(frozen=True)
class Decision:
    """What a request router decides for one request: its route, the text its prompt
    carries beyond the run's format (retrieved exchanges; None: nothing), and what the
    response reports of the decision (`experts`, `retrieved`)."""

    route: Route
    context: Optional[str] = None
    info: dict = field(default_factory=dict)


def experts_of(route: Route) -> list[dict]:
    """The response's `experts`: [{name, weight}] of the adapters a route uses."""
    return [{"name": f.removeprefix("adapters/"), "weight": w} for f, w in route.adapters]


@dataclass
class RouteTable:
    """user id -> Route for the users the run knows; `fallback` for every other id."""

    strategy: str
    users: dict[str, Route]
    fallback: Route
    kind: str = "lora"
    """What the stack holds: `lora`, `prompt` (soft prompts beside a zero LoRA) or `none`."""

    def route(self, user_id: str) -> Route:
        # A dict lookup and nothing else: the id never becomes part of a path.
        return self.users.get(user_id, self.fallback)

    def folders(self) -> list[str]:
        """Every adapter folder a route names (run-relative, sorted)."""
        routes = list(self.users.values()) + [self.fallback]
        return sorted({f for r in routes for f in r.folders})

    def summary(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "kind": self.kind, "users": len(self.users),
                "adapters": len(self.folders()), "fallback": self.fallback.label}


def known_users(ctx) -> list[str]:
    return [p.persona_id for p in ctx.dataset.personas]


def unknown_fallback(ctx) -> Route:
    """For ids the run does not know: the unified adapter when the run has it, else base."""
    return Route.one(UNIFIED) if (ctx.run.path / UNIFIED / CONFIG_FILE).is_file() else BASE


def own_or(ctx, folder: str, other: Route) -> dict[str, Route]:
    """Each user with a training group (an adapter of their own) gets `folder/<user>`, the
    other known users `other`: the same names a per-user predictor stacks (the training
    users with training turns; computed here, not through `strategies.fleet`, so this module
    stays free of torch for the command line)."""
    names = {e.persona_id for e in ctx.examples("train", ctx.training_personas())}
    return {p: Route.one(f"{folder}/{p}") if p in names else other for p in known_users(ctx)}


def fixed_routes(strategy: str, route: Route, kind: str = "lora") -> Callable[[Any], RouteTable]:
    """A serving form where every user gets the same route (base, unified)."""
    return lambda ctx, scfg: RouteTable(strategy, {}, route, kind)
