"""NDCG@10 / HR@10 per item identifier (title | id | semantic) on the shared datasets, beside SASRec.

Same budget for every identifier: steps, batch, LoRA, and a prompt of at most --prompt-tokens tokens holding up
to 20 history items (LC-Rec's protocol: leave-one-out, full ranking, 20 beams, history <= 20); titles are long,
so a title prompt keeps fewer history items within the same token budget.

  scientific   UniSRec Amazon Industrial & Scientific: title, id, semantic (text + co-occurrence)
  instruments  LC-Rec Amazon Instruments, no item text: id and semantic (co-occurrence only)
  games        LC-Rec Amazon Games, no item text: id and semantic (co-occurrence only)

    python scripts/bench_item_ids.py [--datasets scientific,instruments] [--steps 60] [--users 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import lcrec_raw, machine, scientific_raw, write_results  # noqa: E402

STYLES = {"scientific": ["title", "id", "semantic"], "instruments": ["id", "semantic"], "games": ["id", "semantic"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="scientific,instruments")
    ap.add_argument("--styles", help="comma-separated subset of title,id,semantic")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--prompt-tokens", type=int, default=320)
    ap.add_argument("--sasrec-seconds", type=float, default=120.0)
    ap.add_argument("--work", default="runs/bench_item_ids")
    args = ap.parse_args()

    from genrec.config import DataConfig, EvaluateConfig, PromptConfig, SFTConfig
    from genrec.data import prepare
    from genrec.evaluation import run_evaluation
    from genrec.training import train

    work = Path(args.work)
    report = {**{k: v for k, v in vars(args).items() if k != "work"}, "machine": machine(), "datasets": {}}
    rows: list[dict] = []
    for name in args.datasets.split(","):
        d = work / name
        if name == "scientific":
            inter, cat = scientific_raw(d / "raw")
            dcfg = DataConfig(interactions=str(inter), catalog=str(cat), output=str(d / "data"), overwrite=True)
        else:
            inter, cat = lcrec_raw(d / "raw", name)
            dcfg = DataConfig(interactions=str(inter), catalog=str(cat), output=str(d / "data"), overwrite=True,
                              title_col="none", max_history=20)
        prepare(dcfg)
        res = report["datasets"][name] = {}
        styles = [s for s in STYLES[name] if not args.styles or s in args.styles.split(",")]
        for n, style in enumerate(styles):
            out = d / style
            t0 = time.time()
            train(SFTConfig(data=str(d / "data"), output=str(out), overwrite=True, max_steps=args.steps,
                            save_steps=10**6, item_id=style, align_examples=0.1 if style != "title" else 0.0,
                            prompt=PromptConfig(max_history=20, max_prompt_tokens=args.prompt_tokens)))
            sft_s = time.time() - t0
            ev = run_evaluation(EvaluateConfig(model=str(out), max_users=args.users, ks=[5, 10], beam_width=20,
                                               baselines=["popular", "sasrec"] if n == 0 else [],
                                               sasrec_seconds=args.sasrec_seconds, output=str(d / f"eval-{style}")))
            res[style] = {"sft_seconds": round(sft_s, 1), **{k: ev[k] for k in (
                "users_evaluated", "catalog_items", "results", "genrec_users_per_second")}}
            for model, m in ev["results"].items():
                rows.append({"dataset": name, "model": f"genrec ({style})" if model == "genrec" else model,
                             "HR@5": m["HR@5"], "HR@10": m["HR@10"], "NDCG@10": m["NDCG@10"], "MRR": m["MRR"],
                             "validity": m["validity"], "coverage": m["coverage"],
                             "sft_s": round(sft_s) if model == "genrec" else float("nan")})
            write_results("bench_item_ids", report, rows)  # keep what finished


if __name__ == "__main__":
    main()
