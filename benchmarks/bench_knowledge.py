"""Beyond accuracy on the shared datasets: item knowledge in prompts, noisy histories, popularity penalty.

Per dataset, two fine-tunes with the same budget (steps, batch, prompt length):
  facts   items shown with their catalog attributes (MovieLens: genres + top free-text tags;
          Scientific: category path + brand)                       -> prompt.item_facts = all kept
  plain   titles only                                              -> prompt.item_facts = []
then evaluations on the same users:
  facts model beside most-popular and SASRec, clean and with --perturb (same noisy histories for both)
  plain model (the with/without-attributes comparison)
  facts model with --popularity-penalty (its effect on accuracy and on the popularity of what is recommended)

    python -m benchmarks.bench_knowledge [--datasets movielens,scientific] [--steps 40] [--users 100]
"""

from __future__ import annotations


from benchmarks.common import bench_parser, each_dataset, start_report, timed_sft, write_results


def main() -> None:
    args = bench_parser(__doc__, "movielens,scientific", 40, "runs/bench_knowledge",
                        perturb={"default": "drop:0.2", "help": "evaluation perturbation of the facts arm"},
                        penalty={"type": float, "default": 1.0, "help": "popularity penalty of the third run"}
                        ).parse_args()

    from genrec.config import EvaluateConfig, PromptConfig
    from genrec.eval.protocol import run_evaluation

    report, rows = start_report(args), []
    for name, d, res in each_dataset(args, report):
        for arm, facts in (("facts", None), ("plain", [])):
            res[f"sft_seconds_{arm}"] = timed_sft(d / "data", d / arm, args.steps, prompt=PromptConfig(
                max_history=5, max_prompt_tokens=320, item_facts=facts))
        runs = {
            "facts": EvaluateConfig(model=str(d / "facts"), max_users=args.users, perturb=args.perturb,
                                    sasrec_seconds=args.sasrec_seconds, output=str(d / "eval-facts")),
            "plain": EvaluateConfig(model=str(d / "plain"), max_users=args.users, baselines=[],
                                    output=str(d / "eval-plain")),
            f"facts+penalty{args.penalty:g}": EvaluateConfig(
                model=str(d / "facts"), max_users=args.users, baselines=[], popularity_penalty=args.penalty,
                output=str(d / "eval-penalty")),
        }
        for run, cfg in runs.items():
            cfg.ks = [5, 10]  # the perturbation table reports the largest cutoff: @10
            ev = run_evaluation(cfg)
            res[run] = {k: ev[k] for k in ("users_evaluated", "catalog_items", "results", "targets_pop_pct",
                                           "perturbation")}
            for model, m in ev["results"].items():
                label = f"genrec ({run})" if model == "genrec" else model
                rows.append({"dataset": name, "model": label, "HR@10": m["HR@10"], "NDCG@10": m["NDCG@10"],
                             "MRR": m["MRR"], "pop_pct": m["pop_pct"], "long_tail": m["long_tail"],
                             "ILD": m["ILD"], "novelty": m["novelty"], "targets_pop_pct": ev["targets_pop_pct"]})
            for model, ms in (ev["perturbation"] or {"models": {}})["models"].items():
                label = f"genrec ({run})" if model == "genrec" else model
                rows.append({"dataset": name, "model": f"{label} {args.perturb}", "HR@10": ms["HR@10"]["perturbed"],
                             "NDCG@10": ms["NDCG@10"]["perturbed"], "MRR": ms["MRR"]["perturbed"],
                             **{c: float("nan") for c in ("pop_pct", "long_tail", "ILD", "novelty",
                                                           "targets_pop_pct")}})
            write_results(args.name, report, rows)  # keep what finished


if __name__ == "__main__":
    main()
