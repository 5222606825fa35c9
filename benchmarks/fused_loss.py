"""Training-step time of the output head + cross-entropy two ways, on the built-in base:

- `plain`: logits of every target token, then `F.cross_entropy` (the path before
  `personal.models.fused_ce`);
- `fused`: `linear_cross_entropy`, chunk by chunk with the gradients made in the forward.

    python benchmarks/fused_loss.py [--steps 20] [--batch 32] [--threads 1]

Two settings, both on whole background dialogues (user and assistant turns labelled, as in
pretraining): `pretrain` trains every weight (the head too); `frozen_head` freezes the
embeddings and the head, as adapter training does. Each step runs both variants on the same
batch, alternating which goes first, so the host's speed drifts hit both alike; reported are
the median step times and their ratio (same run, same machine). Also checks that the two
give the same loss.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def plain_linear_cross_entropy(hidden, weight, target, token_weight=None, bias=None,
                               chunk=None):
    """The unfused reference: all logits, then `F.cross_entropy`."""
    import torch.nn.functional as F

    from personal.models.fused_ce import weighted_sum

    ce = F.cross_entropy(F.linear(hidden, weight, bias).float(), target, reduction="none")
    return weighted_sum(ce, token_weight), ce.detach()


def timed_step(model, params, batch, variant):
    """Seconds of one forward + backward under `variant`, and its loss."""
    from personal.models import fused_ce, training

    training.linear_cross_entropy = (fused_ce.linear_cross_entropy if variant == "fused"
                                     else plain_linear_cross_entropy)
    t0 = time.perf_counter()
    loss, _ = training.masked_lm_loss(model, batch)
    loss.backward()
    seconds = time.perf_counter() - t0
    for p in params:
        p.grad = None
    return seconds, float(loss)


def measure(model, batches, label):
    import torch

    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    for p in model.parameters():
        p.requires_grad_(True)
    if label == "frozen_head":
        head.weight.requires_grad_(False), emb.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    times = {"plain": [], "fused": []}
    worst = 0.0
    for i, batch in enumerate(batches):
        order = ("plain", "fused") if i % 2 == 0 else ("fused", "plain")
        losses = {}
        for variant in order:
            seconds, losses[variant] = timed_step(model, params, batch, variant)
            if i > 0:  # the first step warms up both
                times[variant].append(seconds)
        worst = max(worst, abs(losses["plain"] - losses["fused"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:]) / max(len(batches) - 1, 1)
    torch.set_grad_enabled(True)
    return {"plain_ms": round(1e3 * med["plain"], 1), "fused_ms": round(1e3 * med["fused"], 1),
            "speedup": round(med["plain"] / med["fused"], 3), "tokens_per_step": round(tokens),
            "max_loss_diff": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", default="runs/bench_fused_loss")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32, help="dialogues per step (pretraining's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a lane has 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from personal.config import Config
    from personal.data.validate import load_dataset
    from personal.experiment.context import Context, ensure_population
    from personal.models.chat import encode_dialogue
    from personal.models.pretrain import LABEL_ROLES, dialogues
    from personal.models.training import collate, length_batches

    torch.set_num_threads(args.threads)
    cfg = Config()
    ctx = Context.create(cfg, args.run)
    model, tok = ctx.base
    background = load_dataset(ensure_population(cfg.data.background_path, cfg, "background"))
    pairs = list(dialogues(background))[: args.batch * (args.steps + 1) * 4]
    feats = [f for meta, msgs in pairs
             for f in encode_dialogue(tok, meta, msgs, cfg.model.max_seq_len, LABEL_ROLES)]
    order = length_batches([len(f["input_ids"]) for f in feats], args.batch,
                           torch.Generator().manual_seed(0))
    batches = [collate([feats[i] for i in idx], tok.pad_token_id, torch.device("cpu"))
               for idx in list(order)[: args.steps + 1]]
    model.train()
    out = {label: measure(model, batches, label) for label in ("pretrain", "frozen_head")}
    out["vocab"], out["threads"] = model.get_output_embeddings().weight.shape[0], args.threads
    if args.json:
        print(json.dumps(out))
        return
    for label in ("pretrain", "frozen_head"):
        r = out[label]
        print(f"{label:>12}: plain {r['plain_ms']:.1f} ms, fused {r['fused_ms']:.1f} ms per step "
              f"of {r['tokens_per_step']} tokens: {r['speedup']:.2f}x "
              f"(loss differs by {r['max_loss_diff']:.1e})")


if __name__ == "__main__":
    main()
