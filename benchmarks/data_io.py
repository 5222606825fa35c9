"""Wall time of simulating, writing, loading (with full validation) and splitting the
default data, and of building the training examples.

    python benchmarks/data_io.py [--users 200] [--sessions 50] [--json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from personal.data.examples import build_examples
    from personal.data.io import write_dataset
    from personal.data.splits import make_splits
    from personal.data.synth import synthesize
    from personal.data.validate import load_dataset

    ds, t_synth = timed(lambda: synthesize(args.users, args.sessions, args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        _, t_write = timed(lambda: write_dataset(ds, tmp))
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        loaded, t_load = timed(lambda: load_dataset(tmp))
    assert loaded == ds, "round trip changed the data"
    splits, t_split = timed(lambda: make_splits(loaded))
    examples, t_examples = timed(lambda: build_examples(loaded, splits, "train"))
    result = {"users": args.users, "sessions": args.sessions, "bytes": size,
              "synth_s": t_synth, "write_s": t_write, "load_validate_s": t_load,
              "split_s": t_split, "train_examples": len(examples), "examples_s": t_examples}
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v:.2f}" if isinstance(v, float) else f"{k:>16}: {v}")


if __name__ == "__main__":
    main()
