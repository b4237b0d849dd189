"""Does genrec's SASRec reproduce the literature? SASRec-CE and most-popular on every test user of the shared
datasets, under the protocol of independent published reference figures (no k-core, users with < 3
interactions dropped, leave-one-out, full ranking, history removed from the ranking, the target never).

Reference (independent implementation): Scientific SASRec NDCG@10 0.0827 / HR@10 0.1199, popular 0.0180;
ml-latest-small SASRec 0.0520 / 0.0951 (file order within a timestamp), popular 0.0183.

    python -m benchmarks.bench_sasrec [--datasets scientific,movielens] [--tie-order file]
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import machine, parser, prepare_shared, write_results

REFERENCE = {"scientific": {"sasrec": 0.0827, "popular": 0.0180}, "movielens": {"sasrec": 0.0520, "popular": 0.0183}}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--datasets", default="scientific,movielens")
    ap.add_argument("--tie-order", default="file", help="file (the reference's rule) or shuffle (genrec's default)")
    ap.add_argument("--sasrec-seconds", type=float, default=None, help="a cap (default: until early stopping)")
    ap.add_argument("--work", default="runs/bench_sasrec")
    ap.add_argument("--name", default="bench_sasrec")
    args = ap.parse_args()

    from genrec.config import EvaluateConfig
    from genrec.data.prepared import load_prepared
    from genrec.eval.protocol import evaluate_baselines

    report = {"settings": vars(args), "machine": machine(), "datasets": {}}
    rows = []
    for name in args.datasets.split(","):
        data = load_prepared(prepare_shared(name, Path(args.work), min_user_interactions=3, min_item_interactions=1,
                                            tie_order=args.tie_order))
        t0 = time.time()
        res = evaluate_baselines(data, EvaluateConfig(ks=[10, 20], sasrec_seconds=args.sasrec_seconds))
        res["wall_seconds"] = time.time() - t0
        report["datasets"][name] = res
        for model, iv in res["intervals"].items():
            ref = REFERENCE.get(name, {}).get(model)
            rows.append({"dataset": name, "model": model, "users": res["users"], "items": res["catalog_items"],
                         "NDCG@10": iv["NDCG@10"]["mean"], "NDCG@10 95% CI": f"[{iv['NDCG@10']['lo']:.4f}, "
                         f"{iv['NDCG@10']['hi']:.4f}]", "HR@10": iv["HR@10"]["mean"],
                         "reference NDCG@10": ref if ref is not None else "",
                         "ratio to reference": iv["NDCG@10"]["mean"] / ref if ref else "",
                         "training": (f"{res['sasrec']['epochs']} epochs, {res['sasrec']['seconds']}s"
                                      + (" (capped)" if res["sasrec"]["capped"] else "")) if model == "sasrec" else ""})
        write_results(args.name, report, rows)  # after each dataset


if __name__ == "__main__":
    main()
