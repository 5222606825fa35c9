"""Adapters in and out as standard peft LoRA folders.

`export_peft(model, k, out_dir)` writes `adapter_config.json` + `adapter_model.safetensors`
with the keys peft 0.21 itself saves for the same LoraConfig
(`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so the folder loads in
`PeftModel.from_pretrained`, vLLM, LoRAX or Ray Serve LLM. Prompt tables, which peft's LoRA
format has no place for, go beside it in `personal_prompts.safetensors` (peft ignores it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from personal.engine.prompts import attach_prompts
from personal.engine.stacked_lora import (StackedWeights, adapter_state, get_routing,
                                          inject_stacked_lora, load_stacked_weights)
from personal.errors import PersonalError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PROMPTS_FILE = "personal_prompts.safetensors"


def export_peft(model: nn.Module, k: int, out_dir: Union[str, Path],
                base_model_name_or_path: Optional[str] = None) -> Path:
    """Write adapter k of the model's stack as a peft LoRA folder; returns the folder."""
    from peft import LoraConfig  # peft loads here only (~2 s); the engine needs it nowhere else

    spec = getattr(model, "_stacked_lora_spec", None)
    if spec is None:
        raise PersonalError("the model has no stacked LoRA layers to export")
    n = get_routing(model).num_adapters
    if not 0 <= k < n:
        raise PersonalError(f"adapter {k} does not exist: the stack holds {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                        target_modules=list(spec["target_modules"]), task_type="CAUSAL_LM",
                        base_model_name_or_path=base_model_name_or_path, bias="none")
    config.save_pretrained(str(out))
    state = {key: t.detach().cpu().contiguous() for key, t in adapter_state(model, k).items()}
    lora = {key: t for key, t in state.items() if not key.startswith("prompts.")}
    prompts = {key: t for key, t in state.items() if key.startswith("prompts.")}
    save_file(lora, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    if prompts:
        save_file(prompts, str(out / PROMPTS_FILE), metadata={"format": "pt"})
    return out


def _module_of(key: str) -> str:
    """`base_model.model.<module>.lora_A.weight` -> `<module>`."""
    return key[len("base_model.model."):].rsplit(".lora_", 1)[0]


@torch.no_grad()
def merge_peft(model: nn.Module, folder: Union[str, Path]) -> nn.Module:
    """Add a peft LoRA folder's update into the model's own linear weights (W += s * B @ A,
    s = alpha / r, computed in fp32): the model then answers as base + that adapter with no
    LoRA path, and a stack injected afterwards trains a residual on top of it. Where a
    stack is already injected, its frozen base layer takes the update."""
    weights = import_peft([folder])
    state, scaling = weights.adapter(0), weights.alpha / weights.rank
    for key in sorted(k for k in state if k.endswith(".lora_A.weight")):
        module = model.get_submodule(_module_of(key))
        linear = getattr(module, "base", module)
        if not isinstance(linear, nn.Linear):
            raise PersonalError(f"{folder}: {_module_of(key)} is not a linear layer")
        a, b = state[key].float(), state[key.replace(".lora_A.", ".lora_B.")].float()
        update = (b.to(linear.weight.device) @ a.to(linear.weight.device)) * scaling
        linear.weight.add_(update.to(linear.weight.dtype))
    return model


def concat_peft(parts: Sequence[tuple[dict[str, torch.Tensor], float]],
                out_dir: Union[str, Path], target_modules: Sequence[str],
                base_model_name_or_path: Optional[str] = None) -> Path:
    """Write one peft LoRA folder whose update is the sum of `parts`' updates, each part a
    (state in peft keys, its scaling alpha / r): the ranks are concatenated (A stacked, the
    B side by side, each times its part's scaling) and lora_alpha equals the total rank, so
    the folder's own scaling is 1 and B @ A = sum of s_i * B_i @ A_i exactly. Any peft
    loader (vLLM, LoRAX, `PeftModel`) then serves the sum as one adapter."""
    from peft import LoraConfig

    keys = sorted(parts[0][0])
    for state, _ in parts[1:]:
        if sorted(state) != keys:
            raise PersonalError("concat_peft: the parts adapt different modules")
    merged = {}
    for key in keys:
        pieces = [state[key].float() * (scale if ".lora_B." in key else 1.0)
                  for state, scale in parts]
        merged[key] = torch.cat(pieces, dim=1 if ".lora_B." in key else 0).contiguous()
    rank = int(merged[next(k for k in keys if k.endswith(".lora_A.weight"))].shape[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(target_modules),
               task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
               bias="none").save_pretrained(str(out))
    save_file(merged, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    return out


def import_peft(dirs: Sequence[Union[str, Path]]) -> StackedWeights:
    """Read peft LoRA folders (one rank, alpha and key set) into stacked weights [K, ...].

    Load them into a model with `inject_from_peft`, or pass them as `init_from`/`l2_to`."""
    if not dirs:
        raise PersonalError("import_peft needs at least one adapter folder")
    states, first = [], None
    for d in dirs:
        config, state = _read_folder(Path(d))
        shape = (config["r"], float(config["lora_alpha"]), sorted(config["target_modules"]),
                 sorted(state))
        if first is None:
            first = shape
        elif shape != first:
            raise PersonalError(f"{d}: rank, alpha, target modules or keys differ from {dirs[0]} "
                                f"(r={shape[0]} vs {first[0]}, alpha={shape[1]} vs {first[1]}); "
                                "one stack needs one shape")
        states.append(state)
    tensors = {key: torch.stack([s[key] for s in states]) for key in states[0]}
    return StackedWeights(first[0], first[1], first[2], tensors)


def _read_folder(d: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (d / name).is_file():
            raise PersonalError(f"{d}: not a peft adapter folder (no {name})")
    try:
        config = json.loads((d / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise PersonalError(f"{d / CONFIG_FILE}:{e.lineno}: not valid JSON ({e.msg})") from None
    if config.get("peft_type") != "LORA":
        raise PersonalError(f"{d / CONFIG_FILE}: peft_type is {config.get('peft_type')!r}, "
                            "only LORA adapters stack")
    for flag in ("use_dora", "use_rslora"):
        if config.get(flag):
            raise PersonalError(f"{d / CONFIG_FILE}: {flag} adapters are not supported")
    if isinstance(config.get("target_modules"), str):
        raise PersonalError(f"{d / CONFIG_FILE}: target_modules is a regex; list the names")
    state = load_file(str(d / WEIGHTS_FILE))
    bad = [key for key in state if not key.endswith((".lora_A.weight", ".lora_B.weight"))]
    if bad:
        raise PersonalError(f"{d / WEIGHTS_FILE}: unexpected key {bad[0]!r} (biases or saved "
                            "modules cannot be stacked)")
    if (d / PROMPTS_FILE).is_file():
        state.update(load_file(str(d / PROMPTS_FILE)))
    return config, state


def inject_from_peft(model: nn.Module, dirs: Sequence[Union[str, Path]],
                     dropout: float = 0.0) -> nn.Module:
    """Inject a stack shaped like the peft folders into `model` and load them (adapter k =
    dirs[k]). Prompt tables saved beside an export are attached and loaded too."""
    weights = import_peft(dirs)
    inject_stacked_lora(model, weights.num_adapters, weights.rank, weights.alpha, dropout,
                        weights.target_modules)
    prefix = weights.tensors.get("prompts.prefix")
    if prefix is not None or "prompts.user_vector" in weights.tensors:
        attach_prompts(model, weights.num_adapters,
                       prefix_len=0 if prefix is None else prefix.shape[1],
                       user_vector="prompts.user_vector" in weights.tensors)
    load_stacked_weights(model, weights)
    return model
