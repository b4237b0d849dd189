#!/usr/bin/env bash
# The main job end to end on the embedded MovieLens sample: prepare -> fine-tune (sequence objective over item
# tokens grounded in item text: ~2 minutes reading the items, then 6 training) -> generate -> evaluate every test
# user beside most-popular and a capped SASRec, with 95% intervals.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
RUN=${GENREC_DEMO_DIR:-runs/sample}
genrec data prepare --output "$RUN/data" --overwrite
genrec sft --config configs/sft.yaml --data "$RUN/data" --output "$RUN/model" --overwrite \
  max_minutes="${GENREC_DEMO_MINUTES:-6}"
printf '{"user_id": "1"}\n{"user_id": "42"}\n{"history": ["1", "260", "1196"], "context": {"device": "tv"}}\n' > "$RUN/users.jsonl"
genrec generate --model "$RUN/model" --users "$RUN/users.jsonl" --out "$RUN/recommendations.jsonl" --k 10 --with-reasons --overwrite
genrec show "$RUN/recommendations.jsonl" --users 3 --k 5
genrec evaluate --model "$RUN/model" ${GENREC_DEMO_USERS:+--max-users "$GENREC_DEMO_USERS"} --k 1,5,10 --batch-size 16 sasrec_seconds=60
