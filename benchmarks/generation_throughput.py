"""Throughput of the model core: new tokens/s of batched generation (batch 1 and 64) and
examples/s of LoRA training, on a given base or a random built-in one. Prints one JSON line.

    python benchmarks/generation_throughput.py                       # random tiny, config sizes
    python benchmarks/generation_throughput.py --model .cache/personal/tiny-<key> --threads 2
    python benchmarks/generation_throughput.py --device cuda model.dtype=bfloat16 \\
        --model /models/Qwen2.5-0.5B-Instruct

Prompts are real simulated turns (a small synthetic population, `data.history_messages` of
history), so prompt lengths match the experiment. A random model rarely emits the end-of-turn
token, so it generates the full `--new-tokens`; a pretrained one stops where its turns end.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="saved built-in base folder or HF model (local); default: "
                                   "a random built-in base of the config's sizes")
    p.add_argument("--device", default=None, help="torch device (overrides model.device)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--batch-sizes", default="1,64", help="generation batch sizes, comma-separated")
    p.add_argument("--prompts", type=int, default=128, help="prompts for the largest batch size")
    p.add_argument("--new-tokens", type=int, default=20, help="max new tokens per turn")
    p.add_argument("--train-examples", type=int, default=256, help="LoRA training examples "
                                                                   "(0: skip training)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value "
                                                "(e.g. model.hidden_size=128)")
    return p.parse_args()


def setup(args: argparse.Namespace):
    """(cfg, model, tokenizer, examples) for the benchmark."""
    from dataclasses import replace

    from personal.config import load_config
    from personal.data.examples import session_examples
    from personal.data.synth import synthesize
    from personal.models import base, pretrain
    from personal.models.tokenizer import train_tokenizer

    overrides = list(args.overrides) + ([f"model.device={args.device}"] if args.device else [])
    cfg = load_config(None, overrides)
    ds = synthesize(users=40, sessions=20, seed=0, population="background")
    examples = [ex for p in ds.personas for s in p.sessions
                for ex in session_examples(p, s, cfg.data.history_messages)]
    if args.model:  # a saved built-in base is an ordinary HF folder too
        model, tok = base.load_hf(replace(cfg, model=replace(cfg.model, base=args.model)))
    else:
        tok = train_tokenizer(pretrain.corpus(ds), cfg.model.vocab_size)
        model = base.build_tiny(cfg.model, tok, seed=0)
        model = model.to(base.resolve_device(cfg.model.device), base.resolve_dtype(cfg.model.dtype))
    return cfg, model.eval(), tok, examples


def bench_generation(cfg, model, tok, examples, batch_size: int, n: int, new_tokens: int) -> dict:
    """New tokens/s and turns/s of `generate` at one batch size (after one warm-up batch)."""
    from dataclasses import replace

    from personal.models.chat import PromptFormat
    from personal.engine.generate import generate

    fmt = PromptFormat.from_config(cfg)
    gen = replace(cfg.generation, batch_size=batch_size, max_new_tokens=new_tokens)
    generate(model, tok, examples[:batch_size], gen, fmt=fmt)  # warm-up
    stats: dict = {}
    generate(model, tok, examples[:n], gen, fmt=fmt, stats=stats)
    return {"turns": n, "new_tokens_per_s": round(stats["new_tokens"] / stats["seconds"], 1),
            "turns_per_s": round(n / stats["seconds"], 2),
            "mean_new_tokens": round(stats["new_tokens"] / n, 1),
            "mean_prompt_tokens": round(stats["prompt_tokens"] / n, 1),
            "seconds": round(stats["seconds"], 2)}


def bench_training(cfg, model, tok, examples, n: int) -> dict:
    """Examples/s and tokens/s of one epoch of `train_lora` (no validation)."""
    from dataclasses import replace

    from personal.models.chat import PromptFormat
    from personal.models.lora import train_lora

    fmt = PromptFormat.from_config(cfg)
    data = examples[:n]
    tokens = sum(len(fmt.encode(tok, ex)["input_ids"]) for ex in data)
    train = replace(cfg.train, epochs=1.0, max_steps=0)
    start = time.perf_counter()
    res = train_lora(model, tok, data, [], cfg.lora, train, progress=False, fmt=fmt)
    wall = time.perf_counter() - start
    return {"examples": len(data), "batch_size": train.batch_size, "steps": res.steps,
            "examples_per_s": round(len(data) / res.seconds, 1),
            "tokens_per_s": round(tokens / res.seconds, 1),
            "seconds_loop": round(res.seconds, 2), "seconds_with_encoding": round(wall, 2)}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, model, tok, examples = setup(args)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    report = {"model": args.model or "random tiny", "device": str(next(model.parameters()).device),
              "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
              "threads": torch.get_num_threads(),
              "params": sum(p.numel() for p in model.parameters()),
              "generation": {}}
    for b in sizes:
        n = min(len(examples), max(args.prompts if b == max(sizes) else 16, b))
        report["generation"][str(b)] = bench_generation(cfg, model, tok, examples, b, n,
                                                         args.new_tokens)
    if args.train_examples:
        report["train_lora"] = bench_training(cfg, model, tok, examples, args.train_examples)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
