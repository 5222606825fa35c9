"""`personal eval --endpoint URL RUN_DIR`: the run's evaluated split replayed as concurrent HTTP
traffic against a served app, scored exactly as offline evaluation.

Each evaluated turn is one request: its user, its session context (meta) and its history as
the messages; the server builds the prompt with the run's own format, so a served answer is
the offline answer. Requests run `concurrency` at a time. Retries: a request that could not
connect, timed out, or got 429/500/502/503/504 (a replica restarting, the proxy busy) is sent
again, at most `retries` more times, after `backoff_s * 2**k` seconds; greedy generation has
no side effects, so a retry can only repeat the answer. Any other 4xx stops there: the
evaluation fails naming the first failed request, and writes nothing.

Written: predictions/<strategy>@endpoint.jsonl and metrics/<strategy>@endpoint_* (the offline
files, by `pipeline.write_evaluation`), plus metrics/<strategy>@endpoint_serving.json: client
latency p50/p99, requests/s, retries, adapters seen, and how many answers equal the offline
predictions of the same strategy when the run has them.
"""
from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlparse

from personal.config import load_config
from personal.data.schema import Example
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import write_evaluation

log = logging.getLogger("personal")

RETRY_STATUS = (429, 500, 502, 503, 504)


@dataclass
class ClientOptions:
    """How the replay talks to the endpoint."""

    concurrency: int = 8
    """Requests in flight at once."""
    retries: int = 4
    """Extra attempts of a request after a connection error, a timeout or a RETRY_STATUS."""
    backoff_s: float = 0.5
    """Wait before retry k (0-based): backoff_s * 2**k seconds."""
    timeout_s: float = 300.0
    """Seconds one attempt may take (a cold replica loads the base model first)."""

    def check(self) -> None:
        if self.concurrency < 1 or self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise PersonalError("endpoint client: need concurrency >= 1, retries >= 0, "
                                "backoff_s >= 0 and timeout_s > 0")


@dataclass
class Reply:
    """One request's outcome: the last attempt's status and body, attempts, seconds."""

    status: int
    body: Any
    attempts: int
    seconds: float
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and isinstance(self.body, dict) and "text" in self.body


def endpoint_url(base: str, path: str) -> str:
    """`base` (http or https, any trailing slash) joined with `path`."""
    parsed = urlparse(base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise PersonalError(f"--endpoint must be an http(s) URL such as "
                            f"http://127.0.0.1:8000, got {base!r}")
    return base.rstrip("/") + path


def request_body(example: Example) -> dict[str, Any]:
    """The request that asks for `example`'s assistant turn."""
    return {"user_id": example.persona_id, "meta": example.meta,
            "messages": [{"role": m.role, "text": m.text} for m in example.history]}


def _send(url: str, body: Optional[dict], timeout: float) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one GET (body None) or POST."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _parse(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, _parse(err.read())


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw.decode("utf-8", "replace")[:500]


def call(url: str, body: Optional[dict], opts: ClientOptions) -> Reply:
    """One request with the documented retries."""
    start = time.perf_counter()
    for attempt in range(opts.retries + 1):
        if attempt:
            time.sleep(opts.backoff_s * 2 ** (attempt - 1))
        try:
            status, parsed = _send(url, body, opts.timeout_s)
            error = None
        except (urllib.error.URLError, OSError) as err:  # refused, reset, timed out
            status, parsed, error = 0, None, f"{type(err).__name__}: {err}"
        if status not in RETRY_STATUS and status != 0:
            break
    return Reply(status, parsed, attempt + 1, time.perf_counter() - start, error)


def replay(url: str, bodies: Sequence[dict], opts: ClientOptions) -> list[Reply]:
    """POST every body to `url`, `opts.concurrency` at a time; replies in input order."""
    with ThreadPoolExecutor(max_workers=opts.concurrency) as pool:
        return list(pool.map(lambda b: call(url, b, opts), bodies))


def wait_ready(base: str, timeout_s: float = 120.0) -> dict:
    """The endpoint's /healthz once it answers 200 (polled), or a PersonalError."""
    url, deadline, last = endpoint_url(base, "/healthz"), time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            status, body = _send(url, None, 10.0)
            if status == 200 and isinstance(body, dict):
                return body
            last = f"status {status}: {body}"
        except (urllib.error.URLError, OSError) as err:
            last = f"{type(err).__name__}: {err}"
        time.sleep(0.5)
    raise PersonalError(f"{url} not ready after {timeout_s:.0f}s ({last})")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def offline_agreement(run_path: Path, strategy: str, examples: Sequence[Example],
                      texts: Sequence[str]) -> Optional[dict]:
    """How many served answers equal the run's offline predictions of `strategy`
    (None when the run has not evaluated it offline)."""
    path = run_path / "predictions" / f"{strategy}.jsonl"
    if not path.is_file():
        return None
    offline = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        offline[(r["persona_id"], r["session_id"], r["turn_index"])] = r["prediction"]
    keys = [(e.persona_id, e.session_id, e.turn_index) for e in examples]
    compared = [(offline[k], t) for k, t in zip(keys, texts) if k in offline]
    equal = sum(a == b for a, b in compared)
    return {"compared": len(compared), "equal": equal,
            "rate": equal / len(compared) if compared else math.nan}


@dataclass
class EndpointResult:
    """What `evaluate_endpoint` returns: the offline-style summary and the serving numbers."""

    name: str
    summary: dict
    serving: dict = field(default_factory=dict)


def _check_health(health: dict, ctx, strategy: Optional[str]) -> str:
    served = health.get("strategy")
    if strategy is not None and served != strategy:
        raise PersonalError(f"the endpoint serves {served}, not {strategy}")
    if health.get("fingerprint") != ctx.fingerprint:
        raise PersonalError(f"the endpoint serves a run of other data (fingerprint "
                            f"{health.get('fingerprint')}, this run {ctx.fingerprint})")
    return served


def _failures(replies: Sequence[Reply], examples: Sequence[Example]) -> None:
    bad = [(r, e) for r, e in zip(replies, examples) if not r.ok]
    if bad:
        r, e = bad[0]
        why = r.error or f"status {r.status}: {r.body}"
        raise PersonalError(f"{len(bad)} of {len(replies)} requests failed after retries; "
                            f"first: {e.persona_id} session {e.session_id} turn "
                            f"{e.turn_index} ({why}); no evaluation was written")


def serving_stats(replies: Sequence[Reply], seconds: float, opts: ClientOptions) -> dict:
    """Client-side numbers of a replay."""
    latency = [r.seconds * 1000 for r in replies]
    adapters: dict[str, int] = {}
    for r in replies:
        adapters[r.body["adapter"]] = adapters.get(r.body["adapter"], 0) + 1
    return {"requests": len(replies), "seconds": seconds,
            "requests_per_s": len(replies) / seconds if seconds > 0 else math.nan,
            "p50_ms": percentile(latency, 50), "p99_ms": percentile(latency, 99),
            "retries": sum(r.attempts - 1 for r in replies), "concurrency": opts.concurrency,
            "max_retries": opts.retries, "backoff_s": opts.backoff_s,
            "distinct_adapters": len(adapters)}


def evaluate_endpoint(run_path: str | Path, url: str, strategy: Optional[str] = None,
                      overrides: Sequence[str] = (),
                      opts: Optional[ClientOptions] = None) -> EndpointResult:
    """Replay the run's evaluated split (`eval.split`, `ctx.eval_personas()`) against the
    endpoint and write its evaluation as `<strategy>@endpoint`."""
    opts = opts or ClientOptions()
    opts.check()
    run_path = Path(run_path)
    if not (run_path / "config.yaml").is_file():
        raise PersonalError(f"{run_path}: not a run directory (no config.yaml)")
    post_url = endpoint_url(url, "/v1/assist")
    ctx = Context.create(load_config(run_path / "config.yaml", list(overrides)), run_path)
    served = _check_health(wait_ready(url, opts.timeout_s), ctx, strategy)
    examples = ctx.examples(ctx.cfg.eval.split, ctx.eval_personas())
    log.info("replaying %d %s turns against %s (%d at a time)", len(examples),
             ctx.cfg.eval.split, post_url, opts.concurrency)
    start = time.perf_counter()
    replies = replay(post_url, [request_body(e) for e in examples], opts)
    seconds = time.perf_counter() - start
    _failures(replies, examples)
    texts = [r.body["text"] for r in replies]
    name = f"{served}@endpoint"
    summary = write_evaluation(ctx, name, examples, texts, seconds)
    serving = {**serving_stats(replies, seconds, opts), "endpoint": url,
               "offline_agreement": offline_agreement(run_path, served, examples, texts)}
    ctx.run.write_json(f"metrics/{name}_serving.json", serving)
    return EndpointResult(name, summary, serving)
