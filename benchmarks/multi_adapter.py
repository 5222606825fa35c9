"""200 per-user LoRA adapters on the simulated data: the engine vs a plain peft loop vs one
unified adapter, and mixed-adapter generation vs one adapter vs one example at a time.

    python benchmarks/multi_adapter.py --json               # the default run (see below)
    python benchmarks/multi_adapter.py --smoke --json       # 8 users, tiny model, seconds
    python benchmarks/multi_adapter.py --device cuda --dtype bfloat16 --threads 8 --json

Data: `synthesize(users, sessions, 0)`, the default splits, every user's training turns
(~110 each) as that user's dataset; the tokenizer is trained on the data's texts and the base
has the built-in base's shape (`Config().model`) with random weights (timing needs no
pretraining). Every variant trains with `Config().lora` and `Config().train` except
`batch_size` (per adapter) and `steps` (per adapter), and sees exactly the same examples:
  engine      one `train_stacked` call: step s packs every user's s-th batch into shared
              passes of `--micro-batch-rows` rows;
  sequential  plain peft + torch AdamW + HF linear schedule + clipping, one adapter after
              another in one process (one peft model, its LoRA reset per user: the cheapest
              honest loop), each user's batches in the engine's order;
  unified     plain peft, one adapter; step s is the union of all users' s-th batches, cut
              into the same passes as the engine's (gradient accumulation), so the same
              tokens in the same number of steps.
Generation (greedy, new tokens/s, exactly `--max-new-tokens` per prompt): one test prompt per
user, batches of `--gen-batch` rows with each row its own user's adapter (`generate_mixed`) vs
one exported adapter in plain peft `generate` at the same batch size vs plain peft one prompt
at a time (how the original study evaluated).

Defaults (200 users, 4 steps of batch 8 per adapter = 6,400 training examples, ~1M tokens per
variant; 200 prompts x 32 new tokens) need ~9 min of CPU: 11.4 min wall with --threads 1 at
load 3.5 on the 2-core dev machine, less on 2 idle cores. Times are the process's CPU time on
a CPU (on a shared machine wall time measures the neighbours too) and wall time on a GPU; both
are reported, with the load average before and after each phase. On a busy machine use
--threads 1: with 2 threads every parallel region waits for whichever thread the neighbours
descheduled (measured: a 20-row decoding step's matmuls 70x slower), which swamps the ratios.
The last line with --json is one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from personal.config import Config, TrainConfig
from personal.engine import (adapter_batches, adapter_state, export_peft, generate_mixed,
                             inject_stacked_lora, train_stacked)
from personal.models.core import schedule
from personal.engine.sampler import IGNORE, collate, pack_rows
from personal.engine.toy import left_pad


def parse(argv=None) -> argparse.Namespace:
    """Command-line settings; `--smoke` shrinks everything to seconds."""
    cfg = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=cfg.data.users, help="adapters (one per user)")
    p.add_argument("--sessions", type=int, default=cfg.data.sessions, help="sessions per user")
    p.add_argument("--steps", type=int, default=4, help="optimiser steps per adapter")
    p.add_argument("--batch-size", type=int, default=8, help="examples per adapter per step")
    p.add_argument("--micro-batch-rows", type=int, default=64,
                   help="rows per forward pass (engine and unified)")
    p.add_argument("--dropout", type=float, default=cfg.lora.dropout, help="LoRA dropout")
    p.add_argument("--gen-prompts", type=int, default=cfg.data.users,
                   help="test prompts, one per user (at most --users)")
    p.add_argument("--gen-batch", type=int, default=0, help="rows per generation batch "
                   "(0: all prompts in one batch, i.e. every adapter in each batch)")
    p.add_argument("--per-example-prompts", type=int, default=16,
                   help="prompts generated one at a time (a rate, so a subset suffices)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--smoke", action="store_true", help="8 users, tiny model: seconds")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    a = p.parse_args(argv)
    a.model = cfg.model
    if a.smoke:
        a.users, a.sessions, a.steps, a.batch_size, a.micro_batch_rows = 8, 5, 2, 2, 8
        a.dropout, a.gen_prompts, a.per_example_prompts, a.max_new_tokens = 0.0, 8, 2, 4
        a.model = replace(cfg.model, hidden_size=32, num_layers=2, num_heads=4,
                          intermediate_size=64, vocab_size=300, max_seq_len=256)
    a.gen_prompts = min(a.gen_prompts, a.users)
    a.gen_batch = a.gen_batch or a.gen_prompts
    return a


# --- Data and model ----------------------------------------------------------------------------

@dataclass
class Workload:
    """Every user's encoded training turns and one encoded test prompt per user."""

    tokenizer: object
    datasets: list[list[dict]]   # per user: {input_ids, labels}
    prompts: list[list[int]]     # per user: prompt ids of its first test turn


def load_workload(a) -> Workload:
    """The default simulated data, a tokenizer trained on its texts, the chat format."""
    from personal.data.examples import build_examples
    from personal.data.splits import make_splits
    from personal.data.synth import synthesize
    from personal.models.chat import PromptFormat
    from personal.models.tokenizer import train_tokenizer

    cfg = Config()
    ds = synthesize(a.users, a.sessions, cfg.data.seed)
    splits = make_splits(ds, cfg.data.train_frac, cfg.data.val_frac)
    texts = [m.text for p in ds.personas for s in p.sessions for m in s.messages]
    tok = train_tokenizer(texts, a.model.vocab_size)
    fmt = PromptFormat(a.model.max_seq_len, cfg.data.history_messages)
    by_user: dict[str, list] = {p.persona_id: [] for p in ds.personas}
    for ex in build_examples(ds, splits, "train", cfg.data.history_messages):
        by_user[ex.persona_id].append(ex)
    tests: dict[str, object] = {}
    for ex in build_examples(ds, splits, "test", cfg.data.history_messages):
        tests.setdefault(ex.persona_id, ex)
    users = [p.persona_id for p in ds.personas]
    datasets = [[_features(fmt.encode(tok, ex)) for ex in by_user[u]] for u in users]
    prompts = [fmt.prompt_ids(tok, tests[u], a.max_new_tokens) for u in users[:a.gen_prompts]]
    return Workload(tok, datasets, prompts)


def _features(encoded: dict) -> dict:
    return {"input_ids": encoded["input_ids"], "labels": encoded["labels"]}


def build_base(a, tokenizer):
    """The built-in base's architecture with random weights, on the device and dtype."""
    from personal.models.base import build_tiny

    model = build_tiny(a.model, tokenizer, seed=0)
    return model.to(device=a.device, dtype=getattr(torch, a.dtype)).eval()


def train_config(a) -> TrainConfig:
    """Config().train with the benchmark's per-adapter batch size and exactly `--steps` steps
    (no validation, so no early stopping)."""
    return replace(Config().train, batch_size=a.batch_size, epochs=float(a.steps),
                   max_steps=a.steps, patience=0)


def plans(datasets, cfg: TrainConfig) -> list[list[list[int]]]:
    """Each adapter's batches in the order the engine draws them (seed cfg.seed + k)."""
    return [adapter_batches(len(d), cfg.batch_size, cfg.epochs, cfg.max_steps, cfg.seed + k,
                            lengths=[len(ex["input_ids"]) for ex in d])
            for k, d in enumerate(datasets)]


# --- Timing ------------------------------------------------------------------------------------

@dataclass
class Timing:
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def add(self, other: "Timing") -> None:
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s


def timed(a, fn):
    """(Timing, fn()) with the device synchronised at both ends."""
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), out


def headline(a, t: Timing) -> float:
    # On a shared CPU the process's CPU time measures the work, wall time the neighbours too.
    return t.wall_s if a.device.startswith("cuda") else t.cpu_s


# --- Training variants -------------------------------------------------------------------------

def train_engine(a, base, datasets, cfg):
    """All adapters in one `train_stacked` call: (Timing, model, initial states, counts)."""
    lora = Config().lora
    model = inject_stacked_lora(copy.deepcopy(base), len(datasets), lora.rank, lora.alpha,
                                a.dropout, lora.target_modules, seed=cfg.seed)
    init = [adapter_state(model, k) for k in range(len(datasets))]
    t, result = timed(a, lambda: train_stacked(model, datasets, cfg,
                                               micro_batch_rows=a.micro_batch_rows))
    steps = step_rows(datasets, plans(datasets, cfg))
    return t, model, init, {"examples": result.examples, "tokens": result.tokens,
                            "padded_tokens": padded_tokens(steps, a.micro_batch_rows)}


def peft_model(a, base):
    """`base` (copied) with one plain peft LoRA adapter of Config().lora's shape."""
    from peft import LoraConfig, get_peft_model

    lora = Config().lora
    return get_peft_model(copy.deepcopy(base), LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=a.dropout,
        target_modules=list(lora.target_modules)))


def train_sequential(a, base, datasets, cfg, init):
    """One adapter after another in one peft model. Returns (Timing, final states, counts)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    pm = peft_model(a, base)
    params = [p for p in pm.parameters() if p.requires_grad]
    total, states, counts = Timing(), [], {"examples": 0, "tokens": 0, "padded_tokens": 0}
    for k, batches in enumerate(plans(datasets, cfg)):
        set_peft_model_state_dict(pm, init[k])
        t, _ = timed(a, lambda: _peft_steps(pm, params, datasets[k], batches, cfg, a.device,
                                            counts))
        total.add(t)
        states.append({key: v.detach().clone() for key, v in
                       get_peft_model_state_dict(pm).items()})
    return total, states, counts


def _peft_steps(pm, params, examples, batches, cfg, device, counts) -> None:
    """The plain single-adapter loop: token-mean loss, clipping, AdamW, warmup + decay."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(len(batches), cfg.warmup_frac))
    pm.train()
    for batch in batches:
        t = collate([(0, examples[i]) for i in batch], 0, device)
        pm(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
           labels=t["labels"]).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        counts["examples"] += len(batch)
        counts["tokens"] += int(t["attention_mask"].sum())
        counts["padded_tokens"] += t["attention_mask"].numel()


def train_unified(a, base, datasets, cfg):
    """One adapter; step s = all users' s-th batches in the engine's passes. (Timing, counts)"""
    steps = step_rows(datasets, plans(datasets, cfg))
    pm = peft_model(a, base)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(len(steps), cfg.warmup_frac))
    counts = {"examples": 0, "tokens": 0, "padded_tokens": 0}

    def run():
        pm.train()
        for rows in steps:
            _accumulate(pm, rows, a.micro_batch_rows, a.device, counts)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad()
    return timed(a, run)[0], counts


def step_rows(datasets, user_plans) -> list[list[dict]]:
    """The examples of each shared step: every adapter's s-th batch, adapter by adapter."""
    return [[datasets[k][i] for k, p in enumerate(user_plans) if s < len(p) for i in p[s]]
            for s in range(max(map(len, user_plans)))]


def padded_tokens(steps: list[list[dict]], micro_batch_rows: int) -> int:
    """Tokens incl. padding of the passes `pack_rows` cuts these steps into (the engine's
    passes, which `train_stacked` does not count)."""
    return sum(len(chunk) * max(len(ex["input_ids"]) for _, ex in chunk) for rows in steps
               for chunk in pack_rows([(0, ex) for ex in rows], micro_batch_rows))


def _accumulate(pm, rows, micro_batch_rows, device, counts) -> None:
    """Backward of the step's token-mean loss, pass by pass (gradient accumulation)."""
    n_targets = sum(sum(t != IGNORE for t in ex["labels"][1:]) for ex in rows)
    for chunk in pack_rows([(0, ex) for ex in rows], micro_batch_rows):
        t = collate(chunk, 0, device)
        logits = pm(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
        # Cross-entropy on the target positions only, as the engine computes it.
        shifted = t["labels"][:, 1:]
        sel = shifted != IGNORE
        loss = F.cross_entropy(logits[:, :-1][sel].float(), shifted[sel], reduction="sum")
        (loss / n_targets).backward()
        counts["examples"] += len(chunk)
        counts["tokens"] += int(t["attention_mask"].sum())
        counts["padded_tokens"] += t["attention_mask"].numel()


def max_abs_diff(engine_model, states) -> float:
    """Largest |engine weight - other weight| over every adapter k and key of `states[k]`."""
    return max((adapter_state(engine_model, k)[key].float().cpu() - v.float().cpu())
               .abs().max().item() for k, s in enumerate(states) for key, v in s.items())


def warm_up(a, base, datasets, cfg) -> None:
    """One step of every variant on two users, untimed: the first call of a code path pays
    one-off costs (lazy imports, kernel selection, allocator growth) no variant should carry."""
    small, cfg1 = datasets[:2], replace(cfg, max_steps=1)
    _, model, init, _ = train_engine(a, base, small, cfg1)
    train_sequential(a, base, small, cfg1, init)
    train_unified(a, base, small, cfg1)


# --- Generation --------------------------------------------------------------------------------

def generation(a, base, model, prompts, tmp_dir) -> dict:
    """New tokens/s: every row its own adapter vs one adapter (peft) vs one prompt at a time."""
    from peft import PeftModel

    n = a.max_new_tokens
    gen = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False,
               pad_token_id=base.generation_config.pad_token_id)
    batches = [list(range(i, min(i + a.gen_batch, len(prompts))))
               for i in range(0, len(prompts), a.gen_batch)]
    padded = [left_pad([prompts[i] for i in b], gen["pad_token_id"]) for b in batches]
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(export_peft(model, 0, tmp_dir)))
    peft.eval()
    few_ids, few_mask = left_pad(prompts[:2], gen["pad_token_id"])
    with torch.no_grad():  # warm-up, untimed (see `warm_up`)
        generate_mixed(model, few_ids, few_mask, torch.tensor([0, len(prompts) - 1]), 2)
        peft.generate(input_ids=few_ids.to(a.device), attention_mask=few_mask.to(a.device),
                      **{**gen, "max_new_tokens": 2, "min_new_tokens": 2})
    mixed, _ = timed(a, lambda: [generate_mixed(model, ids, mask, torch.tensor(b), n)
                                 for b, (ids, mask) in zip(batches, padded)])
    alone = prompts[:a.per_example_prompts]
    with torch.no_grad():
        single, _ = timed(a, lambda: [peft.generate(input_ids=ids.to(a.device),
                                                    attention_mask=mask.to(a.device), **gen)
                                      for ids, mask in padded])
        one, _ = timed(a, lambda: [peft.generate(input_ids=torch.tensor([p], device=a.device),
                                                 **gen) for p in alone])
    new = len(prompts) * n
    return {"mixed": (mixed, new), "single_adapter": (single, new),
            "per_example": (one, len(alone) * n)}


# --- Report ------------------------------------------------------------------------------------

def measure(a) -> dict:
    """Run every variant once, side by side; raw timings and counts."""
    load = [_loadavg()]
    work = load_workload(a)
    base = build_base(a, work.tokenizer)
    cfg = train_config(a)
    warm_up(a, base, work.datasets, cfg)
    engine_t, model, init, engine_n = train_engine(a, base, work.datasets, cfg)
    load.append(_loadavg())
    seq_t, states, seq_n = train_sequential(a, base, work.datasets, cfg, init)
    load.append(_loadavg())
    uni_t, uni_n = train_unified(a, base, work.datasets, cfg)
    load.append(_loadavg())
    with tempfile.TemporaryDirectory() as tmp:
        gen = generation(a, base, model, work.prompts, tmp)
    load.append(_loadavg())
    return {"train": {"engine": (engine_t, engine_n), "sequential": (seq_t, seq_n),
                      "unified": (uni_t, uni_n)}, "generation": gen, "loadavg": load,
            "max_adapter_update": max_abs_diff(model, init),
            "max_adapter_diff": max_abs_diff(model, states) if a.dropout == 0 else None,
            "datasets": work.datasets, "model": base.config}


def _loadavg() -> Optional[float]:
    """The 1-minute load average (the machine is shared: it says how busy it was)."""
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:  # not Linux: no load average to report
        return None


def report(a, m: dict) -> dict:
    """The numbers the issue asks for, with both clocks and the work each variant did."""
    cfg, tr, gen = m["model"], m["train"], m["generation"]
    out = {"device": a.device, "dtype": a.dtype, "threads": a.threads,
           "clock": "wall" if a.device.startswith("cuda") else "process_cpu",
           "users": a.users, "steps_per_adapter": a.steps, "batch_size": a.batch_size,
           "micro_batch_rows": a.micro_batch_rows, "dropout": a.dropout,
           "train_examples_per_user": round(sum(map(len, m["datasets"])) / a.users, 1),
           "model": f"llama h{cfg.hidden_size} l{cfg.num_hidden_layers} v{cfg.vocab_size}",
           "gen_prompts": a.gen_prompts, "gen_batch": a.gen_batch,
           "max_new_tokens": a.max_new_tokens, "loadavg": m["loadavg"]}
    for name, (t, n) in tr.items():
        out.update({f"{name}_s": headline(a, t), f"{name}_wall_s": t.wall_s,
                    **{f"{name}_{key}": value for key, value in n.items()}})
    for name, (t, new) in gen.items():
        out.update({f"{name}_tok_s": new / headline(a, t), f"{name}_wall_tok_s": new / t.wall_s})
    # Training changed the adapters, and (without dropout) the peft loop got the same ones.
    out["max_adapter_update"] = m["max_adapter_update"]
    out["max_adapter_diff_engine_vs_sequential"] = m["max_adapter_diff"]
    out.update(_ratios(out, ""))
    out.update({f"{k}_wall": v for k, v in _ratios(out, "_wall").items()})
    return {k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in out.items()}


def _ratios(out: dict, clock: str) -> dict:
    """The four targets' ratios from the times of one clock ("" headline, "_wall")."""
    def tok_s(name):
        return out[f"{name}{clock}_tok_s"]
    return {"ratio_vs_unified": out[f"engine{clock}_s"] / out[f"unified{clock}_s"],
            "speedup_vs_sequential": out[f"sequential{clock}_s"] / out[f"engine{clock}_s"],
            "mixed_generation_ratio": tok_s("mixed") / tok_s("single_adapter"),
            "speedup_vs_per_example_eval": tok_s("mixed") / tok_s("per_example")}


def main(argv=None) -> dict:
    """Parse, measure, print (a table, or with --json one JSON object last) and return."""
    a = parse(argv)
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")  # peft -> HF 5.x
    out = report(a, measure(a))
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>40}: {v}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
