"""The other recommendation tasks and cross-domain transfer, on the shared MovieLens and Amazon Scientific data.

tasks (MovieLens: ratings; context time_of_day + day_of_week derived from the timestamps), same budget per arm:
  context   next_item with the context fields in its prompts      } with/without context, same test users,
  plain     next_item without context                             } SASRec and most-popular beside
  mixed     ONE run mixing next_item, preference, rating, request, measured per task: preference AUC beside
            popularity, rating RMSE/MAE beside global/user/item means, request HR@K on cold-start users
            (no history, a request built from the held-out item's attributes) beside popularity
transfer (titles make it possible): source only (zero-shot on the target's catalog), source + a short fine-tune
  on the target (--short-steps, continuing the source adapter), target only (--steps); both directions.

    python -m benchmarks.bench_tasks [--parts tasks,transfer] [--steps 40] [--short-steps 15] [--users 100]
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.common import bench_parser, prepare_shared, start_report, timed_sft, write_results

COLS = ("HR@10", "NDCG@10", "AUC", "RMSE", "MAE")


def main() -> None:
    args = bench_parser(__doc__, None, 40, "runs/bench_tasks", parts={"default": "tasks,transfer"},
                        short_steps={"type": int, "default": 15, "help": "steps of the transfer fine-tunes"},
                        reuse={"action": "store_true", "help": "keep the <dataset>-only models a previous run "
                               "finished"}).parse_args()

    from genrec.config import EvaluateConfig, PromptConfig
    from genrec.eval.protocol import run_evaluation
    from genrec.model_dir import ModelCard

    work = Path(args.work)
    report = start_report(args)
    report["parts"] = {}
    rows: list[dict] = []
    prompt = PromptConfig(max_history=10, max_prompt_tokens=320, item_facts=[])

    def sft(prepared: Path, out: Path, steps: int, **kw) -> float:
        return timed_sft(prepared, out, steps, prompt=prompt, **kw)

    def measure(part: str, dataset: str, arm: str, model: Path, sft_s: float | None, **kw) -> dict:
        cfg = EvaluateConfig(model=str(model), max_users=args.users, ks=[5, 10], sasrec_seconds=args.sasrec_seconds,
                             output=str(model.parent / ("eval-" + re.sub(r"\W+", "-", f"{dataset} {arm}"))),
                             **{"baselines": ["popular"], **kw})
        ev = run_evaluation(cfg)
        report["parts"].setdefault(part, {})[f"{dataset}/{arm}"] = {
            k: ev.get(k) for k in ("task", "users_evaluated", "catalog_items", "results", "catalog_transfer")}
        report["parts"][part][f"{dataset}/{arm}"]["sft_seconds"] = sft_s
        for name, m in ev["results"].items():
            rows.append({"part": part, "dataset": dataset, "arm": arm if name == "genrec" else "-",
                         "model": "genrec" if name == "genrec" else name,
                         **{c: m.get(c, float("nan")) for c in COLS},
                         "sft_s": sft_s if name == "genrec" and sft_s is not None else float("nan")})
        write_results(args.name, report, rows)  # keep what finished
        return ev

    parts = args.parts.split(",")
    data = {"movielens": prepare_shared("movielens", work), "scientific": prepare_shared("scientific", work)}
    alone: dict[str, float] = {}  # dataset -> SFT seconds of its next_item model without context (shared by parts)

    def only(name: str) -> Path:
        path = work / f"{name}-only"
        if name not in alone and args.reuse and ModelCard.exists(path):
            alone[name] = round(ModelCard.load(path).stats["train_seconds"], 1)
        if name not in alone:
            alone[name] = sft(data[name], path, args.steps)
        return path

    if "tasks" in parts:
        ctx = prepare_shared("movielens", work / "context", derive_context=["time_of_day", "day_of_week"])
        d = work / "tasks"
        s = sft(ctx, d / "context", args.steps)
        measure("tasks", "movielens", "next_item, context", d / "context", s)
        measure("tasks", "movielens", "next_item, no context", only("movielens"), alone["movielens"],
                baselines=["popular", "sasrec"])
        s = sft(ctx, d / "mixed", args.steps, tasks=["next_item", "preference", "rating", "request"])
        for task in ("preference", "rating", "request"):
            measure("tasks", "movielens", f"mixed: {task}", d / "mixed", s if task == "preference" else None,
                    task=task)
    if "transfer" in parts:
        d = work / "transfer"
        for source, target in (("movielens", "scientific"), ("scientific", "movielens")):
            if target != "movielens" or "tasks" not in parts:  # measured above already
                measure("transfer", target, f"{target} only", only(target), alone[target])
            measure("transfer", target, f"{source} zero-shot", only(source), alone[source], data=str(data[target]))
            s = sft(data[target], d / f"{source}-then-{target}", args.short_steps, init_from=str(only(source)))
            measure("transfer", target, f"{source} -> {target} +{args.short_steps} steps",
                    d / f"{source}-then-{target}", s)


if __name__ == "__main__":
    main()
