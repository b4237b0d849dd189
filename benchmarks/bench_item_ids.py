"""NDCG@10 / HR@10 per item identifier (title | id | semantic) on the shared datasets, beside SASRec.

Same budget for every identifier: steps, batch, LoRA, and a prompt of at most --prompt-tokens tokens holding up
to 20 history items (LC-Rec's protocol: leave-one-out, full ranking, 20 beams, history <= 20); titles are long,
so a title prompt keeps fewer history items within the same token budget.

  scientific   UniSRec Amazon Industrial & Scientific: title, id, semantic (text + co-occurrence)
  instruments  LC-Rec Amazon Instruments, no item text: id and semantic (co-occurrence only)
  games        LC-Rec Amazon Games, no item text: id and semantic (co-occurrence only)

    python -m benchmarks.bench_item_ids [--datasets scientific,instruments] [--steps 60] [--users 100]
"""

from __future__ import annotations


from benchmarks.common import bench_parser, each_dataset, start_report, timed_sft, write_results

STYLES = {"scientific": ["title", "id", "semantic"], "instruments": ["id", "semantic"], "games": ["id", "semantic"]}


def main() -> None:
    args = bench_parser(__doc__, "scientific,instruments", 60, "runs/bench_item_ids",
                        styles={"help": "comma-separated subset of title,id,semantic"},
                        prompt_tokens={"type": int, "default": 320}).parse_args()

    from genrec.config import EvaluateConfig, PromptConfig
    from genrec.eval.protocol import run_evaluation

    report, rows = start_report(args), []
    for name, d, res in each_dataset(args, report):
        styles = [s for s in STYLES[name] if not args.styles or s in args.styles.split(",")]
        for n, style in enumerate(styles):
            out = d / style
            sft_s = timed_sft(d / "data", out, args.steps, item_id=style,
                              align_examples=0.1 if style != "title" else 0.0,
                              prompt=PromptConfig(max_history=20, max_prompt_tokens=args.prompt_tokens))
            ev = run_evaluation(EvaluateConfig(model=str(out), max_users=args.users, ks=[5, 10], beam_width=20,
                                               baselines=["popular", "sasrec"] if n == 0 else [],
                                               sasrec_seconds=args.sasrec_seconds, output=str(d / f"eval-{style}")))
            res[style] = {"sft_seconds": sft_s, **{k: ev[k] for k in (
                "users_evaluated", "catalog_items", "results", "genrec_users_per_second")}}
            for model, m in ev["results"].items():
                rows.append({"dataset": name, "model": f"genrec ({style})" if model == "genrec" else model,
                             "HR@5": m["HR@5"], "HR@10": m["HR@10"], "NDCG@10": m["NDCG@10"], "MRR": m["MRR"],
                             "validity": m["validity"], "coverage": m["coverage"],
                             "sft_s": round(sft_s) if model == "genrec" else float("nan")})
            write_results(args.name, report, rows)  # keep what finished


if __name__ == "__main__":
    main()
