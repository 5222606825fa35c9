"""GPU checks of the chunked output-head cross-entropy (`models.fused_ce`) and of greedy
decoding that drops finished rows.

    python3 benchmarks/gpu_loss_decode.py [--device cuda] [--small]

Prints one `CHECK name PASS|FAIL {...}` line per check and a JSON summary last.
"""
from __future__ import annotations

import argparse
import json
import time
import traceback

import torch
import torch.nn.functional as F

RESULTS: dict = {}


def sync(dev):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def report(name, ok, **info):
    RESULTS[name] = {"ok": bool(ok), **info}
    print(f"CHECK {name} {'PASS' if ok else 'FAIL'} {json.dumps(info)}", flush=True)


def plain_ce(hidden, weight, target):
    ce = F.cross_entropy(F.linear(hidden, weight).float(), target, reduction="none")
    return ce.sum(), ce


def timed(fn, dev, reps):
    """(median seconds of fn() + backward, peak extra memory in MB)."""
    times = []
    for r in range(reps + 1):
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        sync(dev)
        t0 = time.perf_counter()
        total, _ = fn()
        total.backward()
        sync(dev)
        if r:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.startswith("cuda") else 0
    return sorted(times)[len(times) // 2], peak


def fused_ce_check(dev, small):
    from personal.models.fused_ce import linear_cross_entropy

    shapes = [(512, 64, 1000)] if small else [(16384, 2048, 32000), (8192, 4096, 128256)]
    for dtype in (torch.float32, torch.bfloat16):
        for n, h, v in shapes:
            name = f"fused_ce_{str(dtype)[6:]}_{n}x{h}x{v}"
            try:
                g = torch.Generator(device=dev).manual_seed(0)
                hidden = (torch.randn(n, h, device=dev, generator=g) * 0.5).to(dtype)
                weight = (torch.randn(v, h, device=dev, generator=g) / h ** 0.5).to(dtype)
                hidden.requires_grad_(), weight.requires_grad_()
                target = torch.randint(0, v, (n,), device=dev, generator=g)
                grads = {}
                for label, fn in (("plain", lambda: plain_ce(hidden, weight, target)),
                                  ("fused", lambda: linear_cross_entropy(hidden, weight, target))):
                    hidden.grad = weight.grad = None
                    total, _ = fn()
                    total.backward()
                    grads[label] = (float(total), hidden.grad.float().clone(),
                                    weight.grad.float().clone())
                rel = lambda a, b: float((a - b).norm() / b.norm().clamp(min=1e-12))  # noqa
                loss_rel = abs(grads["fused"][0] - grads["plain"][0]) / abs(grads["plain"][0])
                gh, gw = rel(grads["fused"][1], grads["plain"][1]), rel(grads["fused"][2],
                                                                        grads["plain"][2])
                hidden.grad = weight.grad = None
                t_plain, m_plain = timed(lambda: plain_ce(hidden, weight, target), dev, 5)
                hidden.grad = weight.grad = None
                t_fused, m_fused = timed(lambda: linear_cross_entropy(hidden, weight, target),
                                         dev, 5)
                tol = 1e-4 if dtype == torch.float32 else 2e-2
                report(name, loss_rel < tol and gh < tol * 10 and gw < tol * 10,
                       loss_rel=loss_rel, grad_hidden_rel=gh, grad_weight_rel=gw,
                       plain_ms=round(1e3 * t_plain, 2), fused_ms=round(1e3 * t_fused, 2),
                       speedup=round(t_plain / t_fused, 2), plain_peak_mb=round(m_plain),
                       fused_peak_mb=round(m_fused))
                del hidden, weight, grads
                if dev.startswith("cuda"):
                    torch.cuda.empty_cache()
            except Exception as err:
                traceback.print_exc()
                report(name, False, error=f"{type(err).__name__}: {err}"[:400])


def decode_check(dev, small):
    import personal.engine.generate as G
    from personal.engine import adapter_state, generate_mixed, inject_stacked_lora, \
        load_adapter_state
    from personal.engine.toy import tiny_llama

    try:
        sz = (dict(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4,
                   intermediate_size=64) if small else
              dict(vocab_size=4096, hidden_size=512, num_layers=6, num_heads=8,
                   intermediate_size=1536))
        model = inject_stacked_lora(tiny_llama(0, **sz), 8, 8, 16.0, 0.0,
                                    ["q_proj", "k_proj", "v_proj", "o_proj"]).to(dev)
        g = torch.Generator().manual_seed(1)
        for k in range(8):
            load_adapter_state(model, k, {key: 0.3 * torch.randn(t.shape, generator=g)
                                          for key, t in adapter_state(model, 0).items()})
        rows = 32 if small else 256
        gen = torch.Generator().manual_seed(2)
        ids = torch.randint(3, sz["vocab_size"], (rows, 96), generator=gen)
        mask = torch.ones_like(ids)
        mask[::3, :40] = 0
        adapters = torch.arange(rows) % 9 - 1
        free = generate_mixed(model, ids, mask, adapters, 48)
        tokens = free[:, 2:12].flatten().tolist()
        eos = max(set(tokens), key=tokens.count)  # ends many rows at different steps
        real = G._worth_dropping
        out, secs = {}, {}
        for label, worth in (("keep_all", lambda d: False), ("drop", real)) * 2:
            G._worth_dropping = worth
            sync(dev)
            t0 = time.perf_counter()
            out[label] = generate_mixed(model, ids, mask, adapters, 48, eos_token_id=eos,
                                        pad_token_id=0)
            sync(dev)
            secs[label] = time.perf_counter() - t0
        G._worth_dropping = real
        same = torch.equal(out["keep_all"], out["drop"])
        report("decode_drop_rows", same, rows=rows, eos=eos,
               ended_early=int((out["drop"] == 0).any(1).sum()),
               keep_all_s=round(secs["keep_all"], 3), drop_s=round(secs["drop"], 3))
    except Exception as err:
        traceback.print_exc()
        report("decode_drop_rows", False, error=f"{type(err).__name__}: {err}"[:400])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true")
    a = p.parse_args()
    print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))
    fused_ce_check(a.device, a.small)
    decode_check(a.device, a.small)
    print(json.dumps(RESULTS))


if __name__ == "__main__":
    main()
