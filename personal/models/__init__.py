"""Models layer: the base model and its tokenizer, the one chat format, single-adapter LoRA
training and batched generation.

- `tokenizer`: byte-level BPE of the built-in base, special tokens, chat template.
- `chat`: prompt building (system, context, history, target) and its tokenization.
- `base`: `load_base` (built-in `tiny`, cached; or a local Hugging Face model).
- `pretrain`: `pretrain_base`, the built-in base trained on the background population.
- `training`: the shared loop (batches, masked loss, schedule, early stopping).
- `lora`: `train_lora`, one peft LoRA adapter on a list of examples.
- `generate`: `generate`, batched left-padded generation with the KV cache.

Submodules are imported explicitly (`from personal.models.lora import train_lora`) so that
importing the package stays cheap.
"""
