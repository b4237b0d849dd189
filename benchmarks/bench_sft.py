"""Training throughput of the two next-item objectives on the same data, side by side in one run: tokens per
second, tokens per supervised target, supervised targets per second, peak RSS (each arm in its own process).

The prefix objective renders one prompt per history prefix (one target each); the sequence objective one window
per user, every item a target. Each arm trains for the same wall-clock minutes (`--minutes`) from the same data.

    python -m benchmarks.bench_sft [--data runs/bench_quality/movielens/data] [--minutes 3]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, parser, write_results


def run_arm(data: str, objective: str, minutes: float, extra: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "genrec.cli", "sft", "--data", data, "--output", str(out), "--objective", objective,
           "--max-minutes", str(minutes), "--overwrite", "max_steps=0", "num_epochs=1", "save_steps=1000000",
           "logging_steps=1", *extra]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{objective} arm failed: {' '.join(cmd)}")
    from genrec.models import ModelCard

    card = ModelCard.load(out).stats
    tokens_per_target = card["train_tokens"] / card["train_targets"]
    tok_s = card["tokens_seen"] / card["train_seconds"]
    return {"objective": objective, "train_seconds": round(card["train_seconds"], 1), "steps": card["global_step"],
            "tokens_per_second": round(tok_s, 1), "tokens_per_target": round(tokens_per_target, 1),
            "share_of_tokens_with_loss": round(card["target_tokens"] / card["train_tokens"], 3),
            "targets_per_second": round(tok_s / tokens_per_target, 2),
            "peak_rss_gib": round(usage.ru_maxrss / 2 ** 20, 2), "wall_seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", default="runs/bench_quality/movielens/data")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--prefix-args", default="batch_size=8 prompt.max_history=20 prompt.max_prompt_tokens=384 "
                    "prompt.item_facts=", help="overrides of the prefix arm (today's design)")
    ap.add_argument("--sequence-args", default="prompt.max_history=30 prompt.item_facts=",
                    help="overrides of the sequence arm")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for objective, extra in (("prefix", args.prefix_args), ("sequence", args.sequence_args)):
            rows.append(run_arm(args.data, objective, args.minutes, extra.split(), Path(tmp) / objective))
            print(rows[-1], flush=True)
    ratio = rows[1]["targets_per_second"] / rows[0]["targets_per_second"]
    write_results("bench_sft", {"settings": vars(args), "machine": machine(), "arms": rows,
                                "sequence_over_prefix_targets_per_second": round(ratio, 2)}, rows)
    print(f"sequence / prefix supervised targets per second: {ratio:.2f}x")


if __name__ == "__main__":
    main()
