"""K adapters trained together by the engine vs one by one, on the same model and data.

    python benchmarks/engine_throughput.py --adapters 8 --json
    python benchmarks/engine_throughput.py --device cuda --dtype bfloat16 --hidden 896 \
        --layers 24 --heads 14 --intermediate 4864 --vocab 151936 --adapters 64 --json

Training, all on the same data (random tokens, each adapter its own examples) and settings:
  engine        one `train_stacked` call over all K adapters;
  one_by_one    the engine with a one-adapter stack, K times;
  peft_seq      plain peft LoRA + torch AdamW, one adapter after another in one process;
  unified       plain peft, one adapter over all K adapters' examples, K x the batch size,
                so the same tokens in the same number of steps.
Generation (greedy, new tokens/s): K different adapters mixed in one batch (engine) vs one
adapter at the same batch size (peft `generate`) vs one example at a time (peft).
The last line with --json is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from personal.config import TrainConfig
from personal.engine import (adapter_batches, export_peft, generate_mixed, inject_stacked_lora,
                             load_adapter_state, stacked_parameters, train_stacked)
from personal.engine.sampler import collate
from personal.engine.toy import left_pad, random_examples, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapters", type=int, default=8, help="K adapters")
    p.add_argument("--examples", type=int, default=16, help="training examples per adapter")
    p.add_argument("--seq-len", type=int, default=64, help="longest example (tokens)")
    p.add_argument("--batch-size", type=int, default=4, help="per-adapter batch size")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--micro-batch-rows", type=int, default=64)
    p.add_argument("--gen-rows", type=int, default=16, help="prompts per generation batch")
    p.add_argument("--gen-tokens", type=int, default=16, help="new tokens per prompt")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (min)")
    p.add_argument("--skip-peft", action="store_true", help="skip the peft loops")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--smoke", action="store_true", help="tiny settings, seconds")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.smoke:
        a.adapters, a.examples, a.seq_len, a.hidden, a.layers, a.heads = 3, 4, 16, 32, 2, 4
        a.intermediate, a.vocab, a.gen_rows, a.gen_tokens, a.repeats = 64, 96, 6, 4, 1
    return a


def _base(a):
    model = tiny_llama(0, vocab_size=a.vocab, hidden_size=a.hidden, num_layers=a.layers,
                       num_heads=a.heads, intermediate_size=a.intermediate,
                       dtype=getattr(torch, a.dtype))
    return model.to(a.device)


def _sync(a):
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()


def _clock(a):
    # On a shared CPU, wall time measures the neighbours; the process's CPU time measures the
    # work (torch runs single-threaded here). On a GPU only wall time means anything.
    return time.perf_counter if a.device.startswith("cuda") else time.process_time


def _timed(a, fn):
    clock = _clock(a)
    _sync(a)
    t0 = clock()
    out = fn()
    _sync(a)
    return clock() - t0, out


def _best_of(a, measure) -> float:
    """Fastest of `--repeats` measurements: on a shared machine the minimum is the least
    disturbed one (the first also warms caches and lazy imports)."""
    return min(measure() for _ in range(a.repeats))


def _engine(a, data, cfg):
    model = inject_stacked_lora(_base(a), len(data), a.rank, 2.0 * a.rank, 0.0, TARGETS)
    return _timed(a, lambda: train_stacked(model, data, cfg,
                                           micro_batch_rows=a.micro_batch_rows))


def _one_by_one(a, data, cfg) -> float:
    total = 0.0
    for k, examples in enumerate(data):
        model = inject_stacked_lora(_base(a), 1, a.rank, 2.0 * a.rank, 0.0, TARGETS, seed=k)
        total += _timed(a, lambda: train_stacked(model, [examples], cfg, adapter_seeds=[k],
                                                 micro_batch_rows=a.micro_batch_rows))[0]
    return total


def _peft_train(a, examples, cfg, seed) -> float:
    """The plain single-adapter loop: peft LoRA, torch AdamW, the core's schedule, clipping."""
    from peft import LoraConfig, get_peft_model

    from personal.models.core import schedule

    pm = get_peft_model(_base(a), LoraConfig(r=a.rank, lora_alpha=2.0 * a.rank,
                                             target_modules=TARGETS, lora_dropout=0.0))
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = adapter_batches(len(examples), cfg.batch_size, cfg.epochs, cfg.max_steps, seed,
                              lengths=[len(ex["input_ids"]) for ex in examples])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(len(batches), cfg.warmup_frac))
    pm.train()

    def run():
        for batch in batches:
            t = collate([(0, examples[i]) for i in batch], 0, a.device)
            pm(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
               labels=t["labels"]).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad()
    return _timed(a, run)[0]


def train_benchmark(a) -> dict:
    """Wall time of the four ways to train the same K adapters."""
    data = [random_examples(a.examples, seed=100 + k, vocab_size=a.vocab, min_len=a.seq_len // 2,
                            max_len=a.seq_len, prompt_len=a.seq_len // 3)
            for k in range(a.adapters)]
    cfg = TrainConfig(lr=1e-3, epochs=a.epochs, batch_size=a.batch_size, warmup_frac=0.1,
                      max_grad_norm=1.0, patience=0)
    result = _engine(a, data, cfg)[1]
    out = {"engine_s": _best_of(a, lambda: _engine(a, data, cfg)[0]),
           "one_by_one_s": _best_of(a, lambda: _one_by_one(a, data, cfg)),
           "examples": result.examples, "tokens": result.tokens,
           "steps_per_adapter": result.adapters[0].total_steps}
    if not a.skip_peft:
        out["peft_sequential_s"] = _best_of(a, lambda: sum(
            _peft_train(a, d, cfg, cfg.seed + k) for k, d in enumerate(data)))
        unified = [ex for d in data for ex in d]
        ucfg = TrainConfig(**{**cfg.__dict__, "batch_size": cfg.batch_size * a.adapters})
        out["unified_s"] = _best_of(a, lambda: _peft_train(a, unified, ucfg, cfg.seed))
    return out


def generation_benchmark(a, tmp_dir) -> dict:
    """New tokens/s: mixed adapters per batch vs one adapter per batch vs one at a time."""
    from peft import PeftModel

    k_adapters = a.adapters
    model = inject_stacked_lora(_base(a), k_adapters, a.rank, 2.0 * a.rank, 0.0, TARGETS)
    g = torch.Generator().manual_seed(0)
    for k in range(k_adapters):  # distinct, nonzero adapters
        state = {key: 0.02 * torch.randn(p.shape[1:], generator=g)
                 for key, p in stacked_parameters(model).items()}
        load_adapter_state(model, k, state)
    prompts = [ex["input_ids"] for ex in random_examples(a.gen_rows, 7, a.vocab,
                                                         a.seq_len // 2, a.seq_len)]
    ids, mask = left_pad(prompts)
    rows = torch.arange(a.gen_rows) % k_adapters
    n_new = a.gen_rows * a.gen_tokens
    mixed_s = _best_of(a, lambda: _timed(
        a, lambda: generate_mixed(model, ids, mask, rows, a.gen_tokens))[0])
    peft = PeftModel.from_pretrained(_base(a), export_peft(model, 0, tmp_dir)).eval()
    gen = dict(max_new_tokens=a.gen_tokens, min_new_tokens=a.gen_tokens, do_sample=False,
               pad_token_id=0)
    with torch.no_grad():
        single_s = _best_of(a, lambda: _timed(a, lambda: peft.generate(
            input_ids=ids.to(a.device), attention_mask=mask.to(a.device), **gen))[0])
        one_s = _best_of(a, lambda: _timed(a, lambda: [
            peft.generate(input_ids=torch.tensor([p], device=a.device), **gen)
            for p in prompts])[0])
    return {"mixed_tok_s": n_new / mixed_s, "single_adapter_tok_s": n_new / single_s,
            "per_example_tok_s": n_new / one_s}


def main(argv=None) -> dict:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    train = train_benchmark(a)
    with tempfile.TemporaryDirectory() as tmp:
        gen = generation_benchmark(a, tmp)
    report = {"device": a.device, "dtype": a.dtype, "threads": a.threads,
              "clock": "wall" if a.device.startswith("cuda") else "process_cpu",
              "adapters": a.adapters, "examples_per_adapter": a.examples,
              "model": f"llama h{a.hidden} l{a.layers} v{a.vocab}", **train, **gen,
              "engine_examples_s": train["examples"] / train["engine_s"],
              "speedup_vs_one_by_one": train["one_by_one_s"] / train["engine_s"],
              "mixed_generation_ratio": gen["mixed_tok_s"] / gen["single_adapter_tok_s"],
              "speedup_vs_per_example_eval": gen["mixed_tok_s"] / gen["per_example_tok_s"]}
    if "unified_s" in train:
        report["ratio_vs_unified"] = train["engine_s"] / train["unified_s"]
        report["speedup_vs_sequential"] = train["peft_sequential_s"] / train["engine_s"]
    report = {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}
    if a.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>30}: {v}")
    return report


if __name__ == "__main__":
    main()
