"""Training throughput of the two next-item objectives on the same data, side by side in one run: tokens per
second, tokens per supervised target, supervised targets per second, peak RSS (each arm in its own process).

The prefix objective renders one prompt per history prefix (one target each); the sequence objective one window
per user, every item a target; the token arm is the sequence objective over item tokens on a cut decoder (the
default of configs/sft.yaml: one position per item, 10 of 30 layers). Each arm trains for the same wall-clock
minutes (`--minutes`) from the same data.

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
           "logging_steps=1", "item_id=title", "layers=none", "embedding_dropout=0", "item_weight_decay=0", *extra]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{objective} arm failed: {' '.join(cmd)}")
    from genrec.model_dir import ModelCard

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
    ap.add_argument("--token-args", default="item_id=token layers=10 prompt.max_history=50 prompt.item_facts=",
                    help="overrides of the token arm (the sequence objective)")
    ap.add_argument("--arms", default="prefix,sequence,token")
    args = ap.parse_args()
    arms = {"prefix": ("prefix", args.prefix_args), "sequence": ("sequence", args.sequence_args),
            "token": ("sequence", args.token_args)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms.split(","):
            objective, extra = arms[arm]
            rows.append({"arm": arm, **run_arm(args.data, objective, args.minutes, extra.split(), Path(tmp) / arm)})
            print(rows[-1], flush=True)
    per_s = {r["arm"]: r["targets_per_second"] for r in rows}
    ratios = {f"{a} / prefix": round(per_s[a] / per_s["prefix"], 2)
              for a in per_s if a != "prefix" and "prefix" in per_s}
    write_results("bench_sft", {"settings": vars(args), "machine": machine(), "arms": rows,
                                "targets_per_second_over_prefix": ratios}, rows)
    for name, r in ratios.items():
        print(f"supervised targets per second, {name}: {r:.2f}x")


if __name__ == "__main__":
    main()
