"""Augment every training user's dialogues to a target size and write the result as a dataset
folder (canonical layout, splits.json, each new turn's provenance, and augmentation.json with
what each method kept and what the action parser rejected). Only the users' own training
sessions feed it; validation and test sessions and cold-start users are copied unchanged.
Train on it like on any dataset, e.g. per-user or hybrid adapters:

    python scripts/augment_persona_data.py --target_size 100 --methods paraphrase,context_variation --out data/augmented
    personal train per_user_lora --data data/augmented --run runs/augmented
    personal train hybrid_lora --data data/augmented --run runs/augmented

back_translation and synthesis go through a local chat-model folder (`--translation_model`,
`--synthesis_model`; models are never downloaded). `personal train augmented_lora` does both
steps inside one run, where synthesis may also use the run's base. Exit codes: 0 success,
2 bad input, 1 any other failure.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/augment_persona_data.py",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/eval", help="dataset folder (default data/eval)")
    p.add_argument("--splits", help="splits file (default: DATA/splits.json)")
    p.add_argument("--out", required=True, help="folder to write the augmented dataset into")
    p.add_argument("--target_size", type=int, default=100,
                   help="training dialogues per user after augmentation (default 100)")
    p.add_argument("--methods", default="paraphrase,context_variation",
                   help="comma-separated: paraphrase, context_variation, back_translation, "
                        "synthesis")
    p.add_argument("--translation_model",
                   help="local chat-model folder that translates (back_translation)")
    p.add_argument("--translation_pivot", default="German",
                   help="language back-translation goes through (default German)")
    p.add_argument("--synthesis_model", help="local chat-model folder (synthesis)")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from personal.data.io import read_splits
    from personal.data.validate import load_dataset
    from personal.errors import PersonalError
    from personal.strategies.augment import (augment_users, check_methods,
                                             check_model_folder, write_augmented)

    out = Path(args.out)
    try:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        check_methods(methods, args.translation_model, "--methods")
        check_model_folder(args.translation_model, "--translation_model")
        check_model_folder(args.synthesis_model, "--synthesis_model")
        if "synthesis" in methods and not args.synthesis_model:
            raise PersonalError("--methods synthesis needs --synthesis_model (a local chat-model "
                                "folder), or use `personal train augmented_lora "
                                "strategy.augmented_lora.methods=synthesis` with a run's base")
        if args.target_size < 1:
            raise PersonalError(f"--target_size must be >= 1, got {args.target_size}")
        if out.exists() and any(out.iterdir()) and not args.force:
            raise PersonalError(f"--out {out} exists and is not empty; --force replaces it")
        data = Path(args.data)
        splits_file = Path(args.splits) if args.splits else data / "splits.json"
        if not splits_file.is_file():
            raise PersonalError(f"{splits_file}: no splits file (make one with `personal data "
                                f"split {data}`)")
        ds = load_dataset(data)
        splits = read_splits(splits_file, ds)
        tools = model_tools(args, methods, ds)
        result = augment_users(ds, splits, args.target_size, methods, seed=args.seed,
                               tools=tools)
    except PersonalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    write_augmented(result, out, {"methods": methods, "target_size": args.target_size,
                                  "seed": args.seed, "source": str(data)})
    print(json.dumps(result.totals()))
    print(f"augmented dataset: {out} (personal data validate {out})")
    return 0


def model_tools(args: argparse.Namespace, methods: list[str], ds):
    """The chat models the methods call, loaded from their folders (default config: CPU,
    float32, the default prompt format and generation settings)."""
    from personal.config import Config
    from personal.engine.generate import generate
    from personal.models.chat import PromptFormat
    from personal.strategies.augment import Tools
    from personal.strategies.augmented import chat_model, translator

    cfg, tools = Config(), Tools(pivot=args.translation_pivot)
    if "back_translation" in methods:
        tools.translate = translator(cfg, args.translation_model)
    if "synthesis" in methods:
        model, tok = chat_model(cfg, args.synthesis_model)
        fmt = PromptFormat.from_config(cfg, ds)
        tools.generate = lambda examples: generate(model, tok, examples, cfg.generation, fmt=fmt)
    return tools


if __name__ == "__main__":
    sys.exit(main())
