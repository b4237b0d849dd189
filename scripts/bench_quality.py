"""Recommendation quality on the shared datasets with item text: prepare -> sft -> evaluate beside baselines.

Datasets (read from ../shared/data, never copied into the repo):
  movielens   ml-latest-small, 5-core (LlamaRec's "ML-100k": SASRec NDCG@10 0.0522, LlamaRec 0.0759)
  scientific  UniSRec Amazon 2018 Industrial & Scientific (5-core); sequences rebuilt from its test rows
              (history <= 50 + target: 3 users with longer histories lose their oldest items)

    python scripts/bench_quality.py [--datasets movielens,scientific] [--steps 200] [--users 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import SHARED, machine, movielens_raw, scientific_raw, write_results  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="movielens,scientific")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--sasrec-seconds", type=float, default=600.0, help="SASRec training-time budget")
    ap.add_argument("--work", default="runs/bench_quality")
    args = ap.parse_args()

    from genrec.config import DataConfig, EvaluateConfig, PromptConfig, SFTConfig
    from genrec.data import prepare
    from genrec.evaluation import run_evaluation
    from genrec.training import train

    work = Path(args.work)
    report = {"steps": args.steps, "users": args.users, "sasrec_seconds": args.sasrec_seconds, "machine": machine(),
              "datasets": {}}
    rows = []
    for name in args.datasets.split(","):
        d = work / name
        if name == "movielens":
            inter, cat = movielens_raw(d / "raw")
        elif name == "scientific":
            inter, cat = scientific_raw(d / "raw")
        else:
            raise SystemExit(f"unknown dataset {name}")
        prepare(DataConfig(interactions=str(inter), catalog=str(cat), output=str(d / "data"), overwrite=True))
        t0 = time.time()
        train(SFTConfig(data=str(d / "data"), output=str(d / "model"), overwrite=True, max_steps=args.steps,
                        save_steps=10**6, prompt=PromptConfig(max_history=5, max_prompt_tokens=160)))
        sft_s = time.time() - t0
        ev = run_evaluation(EvaluateConfig(model=str(d / "model"), max_users=args.users, ks=[1, 5, 10, 20],
                                           sasrec_seconds=args.sasrec_seconds))
        report["datasets"][name] = {"sft_seconds": sft_s, **{k: ev[k] for k in ("users_evaluated", "users_in_split",
                                                                                 "catalog_items", "results")}}
        for model, m in ev["results"].items():
            rows.append({"dataset": name, "model": model, "HR@10": m["HR@10"], "NDCG@10": m["NDCG@10"],
                         "MRR": m["MRR"], "validity": m["validity"], "coverage": m["coverage"]})
        write_results("bench_quality", report, rows)  # after each dataset: a long run keeps what it finished


if __name__ == "__main__":
    main()
