"""The multi-adapter engine: K LoRA adapters (and soft prompts / user vectors) over one frozen
base, trained each as if alone in shared forward passes, generated in mixed batches, and
exchanged as standard peft folders."""
from personal.engine.generate import generate_mixed, generate_routed
from personal.engine.optim import StackedAdamW, clip_per_adapter
from personal.engine.peft_io import (concat_peft, export_peft, import_peft, inject_from_peft,
                                     merge_peft)
from personal.engine.prompts import PromptTables, attach_prompts, build_inputs
from personal.engine.sampler import adapter_batches
from personal.engine.stacked_lora import (StackedLoRALinear, StackedWeights, adapter_rows,
                                          adapter_state, inject_stacked_lora,
                                          load_adapter_state, load_stacked_weights,
                                          set_adapter_rows, stacked_parameters,
                                          stacked_weights)
from personal.engine.train import (AdapterRun, StackedTrainResult, train_stacked,
                                   validation_losses)

__all__ = [
    "AdapterRun", "PromptTables", "StackedAdamW", "StackedLoRALinear", "StackedTrainResult",
    "StackedWeights", "adapter_batches", "adapter_rows", "adapter_state", "attach_prompts",
    "build_inputs", "clip_per_adapter", "concat_peft", "export_peft", "generate_mixed", "generate_routed",
    "import_peft",
    "inject_from_peft", "inject_stacked_lora", "load_adapter_state",
    "load_stacked_weights", "merge_peft", "set_adapter_rows", "stacked_parameters", "stacked_weights",
    "train_stacked", "validation_losses",
]
