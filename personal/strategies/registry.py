"""The strategy registry: one module per strategy, and everything about it said at registration.

A strategy declares its config dataclass, the units of work it needs in stages (units within a
stage are independent, so an executor can fan them out), the predictor that answers test
turns, how the Serve app serves it (or why it cannot), the plans it belongs to, the expected
seconds of its units (for the ETA) and the Ray forms of its units. Everything else that knows
about strategies (plans, the servable list, the Ray executor, the ETA table) reads it here.

    register_strategy("unified_lora", config=UnifiedConfig, stages=stages, predictor=predictor,
                      serving=servable(routes), plans=("phase1", "baseline"), position=10,
                      expected_seconds={"train/unified_lora": 255, "eval/unified_lora": 165},
                      ray_forms={"train/unified_lora": "personal.distributed.unified:ray_form"})

Strategies of other packages register the same way from a module named by an entry point of
the group `personal.strategies` (in their pyproject.toml:
`[project.entry-points."personal.strategies"] mine = "my_pkg.my_strategy"`); it is imported
the first time the registry is asked for a strategy.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Optional

import personal.strategies as package
from personal.config import from_dict
from personal.errors import PersonalError

log = logging.getLogger("personal")

ENTRY_POINT_GROUP = "personal.strategies"

#: Modules of this package that are not strategies (they serve several).
SHARED_MODULES = {"registry", "common", "fleet", "routes", "retrieval_index"}


@dataclass
class Unit:
    """One independent piece of work: `fn()` returns a JSON-able result record.

    `inputs` is the hash of everything the result depends on (config, data, upstream
    units); `outputs` are run-relative paths the unit writes (checked on resume).
    `needs_base` False marks a unit that never touches the base model (MiniLM work on the
    data alone), so a concurrent executor may run it while the base is still pretraining."""

    name: str
    inputs: str
    fn: Callable[[], dict]
    outputs: list[str]
    needs_base: bool = True


@dataclass(frozen=True)
class Serving:
    """How the Serve app answers a strategy: `routes(ctx, strategy_cfg)` returns its
    RouteTable (user id -> adapters and weights, `personal.strategies.routes`); without one,
    `reason` says why it cannot be served."""

    routes: Optional[Callable[[Any, Any], Any]] = None
    reason: str = ""
    request_router: Optional[Callable[[Any, Any], Any]] = None
    """(ctx, strategy_cfg) -> an object with `decide(examples) -> [Decision]`
    (`personal.strategies.routes`), for strategies whose route or prompt depends on the
    request; the Serve app hosts it as its own deployment. None: the route table decides."""

    @property
    def servable(self) -> bool:
        return self.routes is not None


def servable(routes: Callable[[Any, Any], Any],
             request_router: Optional[Callable[[Any, Any], Any]] = None) -> Serving:
    """Served through `routes(ctx, strategy_cfg) -> RouteTable`, exactly as its predictor
    routes turns; with `request_router`, each request's route (and prompt context) comes
    from it instead, the table giving the adapters the app may load and the fallback."""
    return Serving(routes=routes, request_router=request_router)


def not_servable(reason: str) -> Serving:
    """Not served by the app; `reason` is what `personal serve` answers."""
    if not reason.strip():
        raise PersonalError("not_servable needs a reason")
    return Serving(reason=reason)


@dataclass
class StrategySpec:
    """What the registry knows about a strategy."""

    name: str
    config_cls: type
    """Its options (`strategy.<name>.<option>`), a dataclass with documented fields."""
    stages: Callable[[Any, Any], list[list[Unit]]]
    """(ctx, strategy_cfg) -> stages of units, run in order."""
    predictor: Callable[[Any, Any], Callable[[list], list[str]]]
    """(ctx, strategy_cfg) -> predict(examples) -> texts, used after the stages ran."""
    serving: Serving
    plans: tuple[str, ...] = ()
    """Named plans (`personal run --plan NAME`) the strategy is part of."""
    position: int = 1000
    """Where it stands in plans and the report's table (lower first)."""
    expected_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds of its units (unit-name prefix -> s) on the reference machine, for the ETA."""
    ray_forms: dict[str, str] = field(default_factory=dict)
    """Unit name -> "module:function" of its Ray form, `function(ctx) -> work()`, resolved
    by the Ray executor only (so this layer never imports Ray)."""
    module: str = ""
    description: str = ""
    cold_start: str = ""
    """Its rule for a user with no training data (what the report's cold-start table shows);
    empty: the strategy cannot answer a new user."""


STRATEGIES: dict[str, StrategySpec] = {}


def register_strategy(name: str, *, config: type, stages: Callable, predictor: Callable,
                      serving: Serving, plans: tuple[str, ...] = (), position: int = 1000,
                      expected_seconds: Optional[dict[str, float]] = None,
                      ray_forms: Optional[dict[str, str]] = None,
                      description: str = "", cold_start: str = "") -> StrategySpec:
    """Register a strategy (call it at the end of the strategy's module). Refuses a name
    registered twice and a missing or malformed piece, naming the strategy."""
    where = f"strategy {name!r}"
    if not isinstance(name, str) or not name.isidentifier():
        raise PersonalError(f"{where}: a strategy name is a Python identifier "
                            "(letters, digits, _), e.g. my_strategy")
    if name in STRATEGIES:
        raise PersonalError(f"{where} is registered twice (by {STRATEGIES[name].module} and "
                            f"{getattr(stages, '__module__', '?')})")
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise PersonalError(f"{where}: config must be a dataclass, got {config!r}")
    for piece, fn in (("stages", stages), ("predictor", predictor)):
        if not callable(fn):
            raise PersonalError(f"{where}: {piece} must be a function (ctx, cfg), got {fn!r}")
    if not isinstance(serving, Serving):
        raise PersonalError(f"{where}: serving must be servable(routes) or "
                            f"not_servable(reason), got {serving!r}")
    if isinstance(plans, str) or not all(isinstance(p, str) and p for p in plans):
        raise PersonalError(f"{where}: plans must be a tuple of plan names, got {plans!r}")
    _check_ray_forms(where, ray_forms or {})
    module = getattr(stages, "__module__", "") or ""
    doc = (importlib.import_module(module).__doc__ or "") if module else ""
    if not isinstance(cold_start, str):
        raise PersonalError(f"{where}: cold_start must be the rule for a new user, as text "
                            f"(empty: it cannot answer one), got {cold_start!r}")
    spec = StrategySpec(name, config, stages, predictor, serving, tuple(plans), position,
                        dict(expected_seconds or {}), dict(ray_forms or {}), module,
                        description or doc.strip().split("\n")[0], cold_start)
    STRATEGIES[name] = spec
    return spec


def _check_ray_forms(where: str, forms: dict[str, str]) -> None:
    for unit, target in forms.items():
        if not isinstance(target, str) or target.count(":") != 1:
            raise PersonalError(f"{where}: ray_forms[{unit!r}] must be 'module:function', "
                                f"got {target!r}")


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy `name`, or a PersonalError listing the known ones."""
    load_strategies()
    if name not in STRATEGIES:
        raise PersonalError(f"unknown strategy '{name}' (known: {', '.join(sorted(STRATEGIES))})")
    return STRATEGIES[name]


def all_strategies() -> list[StrategySpec]:
    """Every registered strategy, in plan order (position, then name)."""
    load_strategies()
    return sorted(STRATEGIES.values(), key=lambda s: (s.position, s.name))


#: The study's phases. The plan `full` (the main job's) is every strategy of any of them.
PHASES = ("phase1", "phase2", "phase3")


def plans() -> dict[str, list[str]]:
    """Plan name -> its strategies in order, from what each strategy declared, plus `full`."""
    out: dict[str, list[str]] = {}
    for spec in all_strategies():
        for plan in spec.plans:
            out.setdefault(plan, []).append(spec.name)
    out["full"] = [s.name for s in all_strategies() if set(s.plans) & set(PHASES)]
    return out


def servable_strategies() -> list[str]:
    return [s.name for s in all_strategies() if s.serving.servable]


def expected_seconds_table() -> dict[str, float]:
    """Unit-name prefix -> expected seconds, merged over the registered strategies."""
    table: dict[str, float] = {}
    for spec in all_strategies():
        table.update(spec.expected_seconds)
    return table


def strategy_config(spec: StrategySpec, options: Optional[dict]) -> Any:
    """The strategy's config dataclass from the free-form `strategy` section of the config."""
    return from_dict(spec.config_cls, options or {}, where=f"strategy {spec.name}",
                     prefix=f"strategy.{spec.name}.")


def strategy_config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


_loaded = False


def load_strategies() -> None:
    """Import the built-in strategy modules and the entry points' modules (once), so they
    register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name not in SHARED_MODULES:
            importlib.import_module(f"{package.__name__}.{info.name}")
    _load_entry_points()


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except PersonalError:
            raise
        except Exception as err:  # noqa: BLE001  (an outside package's bug: name it)
            raise PersonalError(f"entry point {ep.name} = {ep.value} (group "
                                f"{ENTRY_POINT_GROUP}) failed to load: {err}") from err
