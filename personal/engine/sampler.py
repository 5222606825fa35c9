"""Each adapter's own data order, and packing of many adapters' batches into shared passes.

Adapter k draws its examples from its own generator (seed `seed + k` unless given), epoch
after epoch, in length-bucketed batches of `batch_size` (the training core's `batch_plan`);
this is the order it would see if trained alone, by `train_lora` too.
A training step takes the next batch of every adapter still training and packs them, sorted
by length, into forward passes of at most `micro_batch_rows` rows (cut to keep padding low).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from personal.errors import PersonalError
from personal.models.core import plan_steps
from personal.models.training import batch_plan

IGNORE = -100


def adapter_batches(num_examples: int, batch_size: int, epochs: float, max_steps: int,
                    seed: int, min_steps: int = 0,
                    lengths: Optional[Sequence[int]] = None) -> list[list[int]]:
    """The batches (lists of example indices) one adapter trains on, in order: the one
    training core's plan (`models.training.batch_plan`, length-bucketed epochs from one
    generator seeded `seed`), so an adapter gets the batches it would get from `train_lora`.

    Steps are `models.core.plan_steps`: ceil(epochs * batches per epoch), at least
    `min_steps`, capped by `max_steps` if > 0. `lengths` are the examples' token counts
    (without them every example counts as the same length: batches of a random order)."""
    if num_examples == 0:
        return []
    if batch_size < 1:
        raise PersonalError(f"batch_size must be >= 1, got {batch_size}")
    if lengths is not None and len(lengths) != num_examples:
        raise PersonalError(f"lengths has {len(lengths)} entries for {num_examples} examples")
    steps = plan_steps(num_examples, batch_size, epochs, max_steps, min_steps)
    return batch_plan(list(lengths) if lengths is not None else [1] * num_examples,
                      batch_size, steps, seed)


def check_examples(datasets: Sequence[Sequence[dict]], what: str = "datasets") -> None:
    """Every example needs `input_ids` and `labels` of one length with a target token;
    the error names the adapter, the example and the field."""
    for k, examples in enumerate(datasets):
        for i, ex in enumerate(examples):
            where = f"{what}[{k}][{i}]"
            for field in ("input_ids", "labels"):
                if field not in ex:
                    raise PersonalError(f"{where}: missing field {field!r}")
            n, m = len(ex["input_ids"]), len(ex["labels"])
            if n != m:
                raise PersonalError(f"{where}: labels has {m} entries, input_ids {n}")
            if n < 2 or all(int(t) == IGNORE for t in list(ex["labels"])[1:]):
                raise PersonalError(f"{where}: no target token (labels are all -100 after the "
                                    f"first position)")


def target_count(example: dict, has_prefix: bool) -> int:
    """Target tokens the example contributes to the loss. Labels are shifted by one, so the
    first token counts only when a prefix puts a position in front of it."""
    labels = [int(t) for t in example["labels"]]
    return sum(t != IGNORE for t in (labels if has_prefix else labels[1:]))


#: A forward + backward pass's fixed cost in padded-token equivalents, by device. On 2 CPU
#: cores a pass of the built-in base costs ~8 ms plus ~135 us per token (rows x width), so a
#: pass is worth ~64 tokens of padding (benchmarks/fleet_step.py); a GPU pays far more
#: per launch and far less per token, so there it is worth large passes.
PASS_COST_TOKENS = {"cpu": 64, "cuda": 16384}


def pass_cost(device: torch.device) -> int:
    """`pack_rows`' fixed cost of a pass on this device (unknown kinds count as a GPU)."""
    return PASS_COST_TOKENS.get(device.type, PASS_COST_TOKENS["cuda"])


def pack_rows(rows: list[tuple[int, dict]], micro_batch_rows: int,
              pass_cost: int = PASS_COST_TOKENS["cpu"]) -> list[list[tuple[int, dict]]]:
    """Split (adapter, example) rows into forward passes of at most `micro_batch_rows` rows,
    sorted by length, cut where it minimises padded tokens + `pass_cost` per pass.

    Fixed-size chunks padded a step of 10 cluster adapters (40 sessions of 60-800 tokens in
    one pass) to 1.8x its real tokens; the cut is chosen exactly, by dynamic programming
    over the sorted rows. The split does not change the result: every row's loss is weighted
    by its own adapter's token count, so gradients accumulate to the same sum."""
    rows = sorted(rows, key=lambda r: len(r[1]["input_ids"]), reverse=True)
    size = max(1, micro_batch_rows)
    n = len(rows)
    best, cut = [0.0] * (n + 1), [n] * (n + 1)
    for i in range(n - 1, -1, -1):  # best[i]: cheapest packing of rows[i:]
        width = len(rows[i][1]["input_ids"])  # the widest row of any pass starting at i
        best[i] = float("inf")
        for j in range(i + 1, min(n, i + size) + 1):
            cost = pass_cost + width * (j - i) + best[j]
            if cost < best[i]:
                best[i], cut[i] = cost, j
    passes, i = [], 0
    while i < n:
        passes.append(rows[i:cut[i]])
        i = cut[i]
    return passes


def collate(rows: list[tuple[int, dict]], pad_token_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded tensors for a pass: input_ids, attention_mask, labels, adapter index."""
    width = max(len(ex["input_ids"]) for _, ex in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (_, ex) in enumerate(rows):
        n = len(ex["input_ids"])
        ids[r, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
        labels[r, :n] = torch.as_tensor(ex["labels"], dtype=torch.long)
        mask[r, :n] = 1
    adapters = torch.tensor([k for k, _ in rows], dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device), "adapters": adapters.to(device)}
