"""Collaborative retrieval + language-model ranking on the shared datasets, under the protocol of bench_quality
(leave-one-out, full ranking, earlier items excluded, the target rankable, seeded tie order, no k-core):

  rerank      `genrec sft --task rerank`: SASRec (trained to convergence, saved in the model) proposes K, the LLM
              picks among them with one forward pass; also its fusion with SASRec's own scores from the same pass,
              log p_LLM + w log softmax(SASRec), w chosen by `genrec tune-fusion` on validation users (never
              these test users; --fusion-users 0: w = 1 fixed in advance)
  candidates  a next_item model (sequence objective, same minutes) decoding within SASRec's K candidates
  full        the same next_item model over the whole catalog
  token-candidates, token-full
              the same two with a next_item model over item tokens (item_id=token, history 50, no facts): one
              forward pass scores every candidate, so every test user can be evaluated (--users 10000)
  default-candidates
              `genrec sft --data D` as it comes (the library's defaults, the best measured recipe; `--sft KEY=VALUE`
              on top, e.g. item_text=grounded, named in the model's directory) with a SASRec retriever, searched
              within its K with the weight `tune-fusion` chose: the tuned hybrid of the default model
  sasrec      the rerank model's retriever alone, popular: most-popular

Every LLM arm trains for the same M minutes and is evaluated on the same seeded users; baselines on those users
and on all users; NDCG@10 / HR@10 with 95% bootstrap intervals and paired differences against SASRec. Finished
arms are reused (their metrics.json is kept), so arms can be added over several sessions:

    python -m benchmarks.bench_hybrid --datasets movielens --arms rerank --minutes 30
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.common import TITLE_RECIPE, arms_parser, dataset_arms, learning_curve, machine, write_results

ARMS = ("rerank", "candidates", "full", "token-candidates", "token-full", "default-candidates")


def model_dir(work: Path, name: str, arm: str, sft: list[str] = ()) -> Path:
    """The model an arm evaluates: the rerank model, or the next_item model (titles or item tokens) that its
    candidates and full arms share, or the default recipe's model (its `--sft` overrides in its name)."""
    if arm == "default-candidates":
        return work / name / "-".join(["next_item_default", *(s.replace("=", "_") for s in sft)])
    return work / name / {"rerank": "rerank", "candidates": "next_item", "full": "next_item"}.get(arm, "next_item_token")


def train_arm(arm: str, data: Path, model: Path, args) -> float:
    from genrec.config import PromptConfig, SFTConfig
    from genrec.train.recipe import train

    t0 = time.time()
    borrowed = next((p for p in (model.parent / d / "retriever" for d in ("rerank", "next_item", "next_item_token"))
                     if p.is_dir()), None)
    if arm == "default-candidates":
        from genrec.config import parse_overrides, with_overrides

        train(with_overrides(SFTConfig(data=str(data), output=str(model), max_minutes=args.minutes, overwrite=True,
                                       retriever=args.retriever or (str(borrowed) if borrowed else "sasrec")),
                             parse_overrides(args.sft)))
    elif arm == "rerank":
        prompt = PromptConfig(task="rerank", max_history=args.history, max_prompt_tokens=512,
                              rerank_candidates=args.k, item_facts=[f for f in args.facts.split(",") if f],
                              max_title_chars=args.title_chars)
        train(SFTConfig(**{**TITLE_RECIPE, **dict(
            data=str(data), output=str(model), prompt=prompt, max_steps=0, num_epochs=3, max_minutes=args.minutes,
            save_steps=80, keep_checkpoints=5, overwrite=True, rerank_copies=8, retriever=args.retriever or "sasrec")}))
    else:  # one next_item model serves the candidates and full arms, with the rerank arm's retriever if it has one
        tokens = arm.startswith("token")
        prompt = PromptConfig(max_history=50, item_facts=[]) if tokens else PromptConfig(
            max_history=args.history, item_facts=[f for f in args.facts.split(",") if f],
            max_title_chars=args.title_chars)
        train(SFTConfig(**{**TITLE_RECIPE, **dict(
            data=str(data), output=str(model), objective="sequence", prompt=prompt, max_steps=0,
            num_epochs=20 if tokens else 3, max_minutes=args.minutes, save_steps=100, overwrite=True,
            item_id="token" if tokens else "title",
            retriever=args.retriever or (str(borrowed) if borrowed else "sasrec"))}))
    return time.time() - t0


def main() -> None:
    ap = arms_parser(__doc__, "movielens,scientific", "rerank,candidates,full", 30.0, 20, "runs/bench_hybrid")
    ap.add_argument("--k", type=int, default=20, help="retriever candidates (K)")
    ap.add_argument("--title-chars", type=int, default=120, help="prompt.max_title_chars (long product titles cost "
                    "tokens in every candidate line)")
    ap.add_argument("--retriever", default=None, help="a retriever trained before for this dataset (a model directory "
                    "or its retriever/); default: SASRec trained to convergence by the rerank arm")
    ap.add_argument("--curve-users", type=int, default=100, help="learning curve of the rerank arm (0: none)")
    ap.add_argument("--fusion-users", type=int, default=2000, help="validation users `tune-fusion` chooses the "
                    "hybrid's retriever weight on, before a hybrid arm's test evaluation (0: w = 1, fixed)")
    ap.add_argument("--sft", action="append", default=[], metavar="KEY=VALUE", help="an SFTConfig override for "
                    "the default-candidates arm (repeatable, e.g. --sft item_text=grounded)")
    ap.add_argument("--fusion-k", default="", help="comma-separated K that `tune-fusion` chooses among with the "
                    "weight, for the generative hybrid arms (default: --k only); results in eval-<arm>-k<K,...>/")
    args = ap.parse_args()

    from genrec.config import EvaluateConfig, FusionConfig
    from genrec.files import read_json
    from genrec.model_dir import ModelCard
    from genrec.metrics import fmt_ci, fmt_diff

    work = Path(args.work)
    report = {"settings": vars(args), "machine": machine(), "arms": {}}
    rows = []
    for name, data, _, arm in dataset_arms(work, args.datasets, args.arms, ARMS):
        model = model_dir(work, name, arm, args.sft)
        hybrid = arm == "rerank" or arm.endswith("candidates")
        sizes = [int(k) for k in args.fusion_k.split(",") if k] if arm != "rerank" and hybrid else []
        tag = f"-k{','.join(map(str, sizes))}" if sizes and sizes != [args.k] else ""
        if arm == "default-candidates":
            tag += "".join(f"-{s.replace('=', '_')}" for s in args.sft)
        metrics_path = work / name / f"eval-{arm}{tag}" / "metrics.json"
        if not metrics_path.is_file():
            if not ModelCard.exists(model):
                sft_wall = train_arm(arm, data, model, args)
                (model / "sft_wall.json").write_text(json.dumps({"seconds": sft_wall}))
            from genrec.eval.fusion import tune_fusion# imported late: a long run picks up fixes
            from genrec.eval.protocol import run_evaluation

            tuned = ModelCard.load(model).fusion() if hybrid else None
            wanted = sorted(set(sizes or [args.k]))
            if hybrid and args.fusion_users and (tuned is None or arm != "rerank" and wanted != sorted(
                    {row.get("candidates", tuned["candidates"]) for row in tuned["table"]})):
                tune_fusion(FusionConfig(model=str(model), candidates="retriever:" + ",".join(map(str, wanted)),
                                                 max_users=args.fusion_users))  # validation users only
            run_evaluation(EvaluateConfig(
                model=str(model), max_users=args.users, ks=[1, 5, 10], batch_size=8,
                output=str(metrics_path.parent), baselines=["popular", "sasrec"],
                candidates=None if arm == "rerank" or hybrid and args.fusion_users else
                f"retriever:{args.k}" if hybrid else "catalog"))
        ev = read_json(metrics_path)
        loaded = ModelCard.load(model)
        card = loaded.stats
        report["arms"][f"{name}/{arm}"] = {k: ev.get(k) for k in (
            "users_evaluated", "users_in_split", "catalog_items", "results", "intervals", "paired_differences",
            "baselines_all_users", "sasrec", "retriever_recall", "genrec_users_per_second", "genrec_seconds",
            "fusion", "slices")}
        tuning = loaded.fusion()
        if tuning is not None:
            report["arms"][f"{name}/{arm}"]["fusion_tuning"] = tuning
        report["arms"][f"{name}/{arm}"]["training"] = {k: card.get(k) for k in (
            "train_seconds", "global_step", "train_examples", "train_tokens", "stopped_by_clock", "train_loss")}
        for model_name, iv in ev["intervals"].items():
            if arm != "rerank" and model_name in ("sasrec", "popular") and f"{name}/rerank" in report["arms"]:
                continue  # the same baselines on the same users: shown once, with the rerank arm when it ran
            fusion = ev.get("fusion") or {}
            w, h = fusion.get("weight", 1.0), fusion.get("history_match", 0.0)
            label = {"genrec": f"genrec ({arm})", "genrec x sasrec": f"genrec x sasrec ({arm}, w={w:g}" +
                     (f", history match {h:g})" if h else ")")}.get(model_name, model_name)
            d = ev["paired_differences"].get(f"{model_name} - sasrec", {}).get("NDCG@10") \
                if model_name.startswith("genrec") else None
            rows.append({
                "dataset": name, "model": label, "users": ev["users_evaluated"],
                "NDCG@10": fmt_ci(iv["NDCG@10"]), "HR@10": fmt_ci(iv["HR@10"]),
                "genrec - sasrec (NDCG@10)": "" if d is None else fmt_diff(d),
                "users/s": ev["genrec_users_per_second"] if model_name == "genrec" else "",
                "CPU-min (train)": round(card["train_seconds"] / 60, 1) if model_name.startswith("genrec") else
                (round(ev["sasrec"]["seconds"] / 60, 1) if model_name == "sasrec" else ""),
            })
        if arm == "rerank" and args.curve_users:
            report["arms"][f"{name}/{arm}"]["learning_curve"] = learning_curve(
                model, work / name / "curve-rerank", args.curve_users, "test")
        write_results(args.name, report, rows)  # after each arm: a long run keeps what it finished


if __name__ == "__main__":
    main()
