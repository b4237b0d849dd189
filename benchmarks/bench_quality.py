"""Recommendation quality per CPU-minute on the shared datasets: genrec (sequence objective, and the prefix
objective as the "before") for the same M minutes of training, beside SASRec trained to convergence and
most-popular, all under one protocol (leave-one-out, full ranking, earlier items excluded, the target rankable,
equal timestamps in a seeded order; no k-core, users with < 3 interactions dropped, as the reference baselines).

An arm's M minutes are counted on the CPU clock (`clock=cpu`: the training process's CPU time over its torch
threads), so an arm trained while the machine was busy does the work of one trained on an idle machine. Result
files written before this (their settings have no `clock`) counted wall-clock minutes, and their step counts
followed the machine's load: 371 and 1,105 steps of the same recipe on Scientific.

The LLM arms are evaluated on a seeded sample of test users (default: up to 610, i.e. all of ml-latest-small), the
baselines on every test user and on the LLM's users; each metric with a 95% bootstrap interval and genrec minus
each baseline as a paired difference. Finished arms are reused (their metrics.json is kept), so the table can be
filled over several sessions:

    python -m benchmarks.bench_quality --datasets movielens --arms sequence --minutes 60
    python -m benchmarks.bench_quality --datasets movielens,scientific --arms sequence,prefix --minutes 60
    python -m benchmarks.bench_quality --datasets scientific --arms token --minutes 30 --users 8442

Arms: default (`genrec sft --data D` as it comes: the library's defaults, which are meant to be the best measured
recipe, for --minutes instead of the default 30), sequence (titles, the sequence objective), prefix (titles, one prompt per history prefix: the "before"),
token (the sequence objective over one new token per item, item_id=token: one token per item, and one forward
pass ranks the whole catalog, so every test user can be evaluated). `--layers N` trains the LLM arms on the base
model's first N decoder layers (`layers=N`: more steps per CPU-minute) into `<arm>-layers<N>/`, beside the full
depth's arm, and every two arms of a dataset evaluated on the same users are compared pairwise:

    python -m benchmarks.bench_quality --datasets scientific --arms token --minutes 30 --users 8442 --layers 10
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.common import arms_parser, dataset_arms, learning_curve, machine, paired_arms, write_results

ARMS = ("default", "sequence", "prefix", "token")
# token: the sequence objective with one new vocabulary token per item (item_id=token), SASRec's history of 50


CLOCK = "cpu"  # what an arm's minutes count (SFTConfig.clock), recorded in the result file's settings

def main() -> None:
    ap = arms_parser(__doc__, "movielens,scientific", "sequence,prefix", 60.0, 30, "runs/bench_quality")
    ap.add_argument("--sasrec-seconds", type=float, default=None, help="cap on SASRec (default: until converged)")
    ap.add_argument("--curve-users", type=int, default=100, help="learning curve: NDCG@10 of this many validation "
                    "users at checkpoints every quarter of --minutes and at the end (0: none)")
    ap.add_argument("--baselines", default="popular,sasrec", help="baselines evaluated with a dataset's first arm "
                    "('' = none: another arm of the dataset has them already, on the same users)")
    ap.add_argument("--sft", action="append", default=[], metavar="KEY=VALUE", help="an SFTConfig override for the "
                    "LLM arms (repeatable, e.g. --sft lora_dropout=0.1); the arm's directory name says it")
    ap.add_argument("--cold-items", type=float, default=0.0, help="the cold-item protocol: hold this share of items "
                    "out of training (`genrec data prepare --cold-items`; use its own --work); evaluation then "
                    "reports cold and warm targets and the content baseline")
    ap.add_argument("--request", action="store_true", help="also evaluate each arm that answers requests (trained "
                    "with request lines, --sft prompt.request_share=S, or item tokens matching a request's words to "
                    "item texts, --text-match) with `--task request` on the same users (history + a request for "
                    "the target, beside the same model without it, MiniLM on the request alone, SASRec, popular), "
                    "and its reasons' grounding on --reason-users users when it writes reasons")
    ap.add_argument("--reason-users", type=int, default=500)
    ap.add_argument("--reasons", action="store_true", help="also measure each arm's reasons (trained, or explained "
                    "for item tokens) on --reason-users test users: `evaluate --with-reasons`")
    ap.add_argument("--text-match", default="0", help="--request: text_match weights tried on --tune-users validation "
                    "users; the best (NDCG@10) is the one the test users get (e.g. 0,1,2,4,8)")
    ap.add_argument("--history-match", default="0", help="history_match weights tried on --tune-users validation "
                    "users for each item-token arm (e.g. 0,1,3,10): the best (NDCG@10) is evaluated on the test users, "
                    "paired against the arm without it, with its slices (tail and cold targets)")
    ap.add_argument("--tune-users", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=None, help="train the LLM arms on the base model's first N decoder "
                    "layers (their directories: <arm>-layers<N>); default: all")
    args = ap.parse_args()

    from genrec.config import EvaluateConfig, PromptConfig, SFTConfig, parse_overrides, with_overrides
    from genrec.eval.protocol import run_evaluation
    from genrec.files import read_json
    from genrec.model_dir import ModelCard, checkpoints
    from genrec.metrics import fmt_ci, fmt_diff
    from genrec.train.recipe import train

    work = Path(args.work)
    report = {"settings": {**vars(args), "clock": CLOCK}, "machine": machine(), "arms": {}}
    rows = []
    for name, data, n, arm in dataset_arms(work, args.datasets, args.arms, ARMS, args.cold_items):
        label = arm + ("" if args.layers is None else f"-layers{args.layers}") + "".join(f"-{o}" for o in args.sft)
        model = work / name / label
        metrics_path = model / "eval-test" / "metrics.json"
        if not metrics_path.is_file():
            facts = [f for f in args.facts.split(",") if f]
            prompt = {"sequence": PromptConfig(max_history=args.history, item_facts=facts),
                      "token": PromptConfig(max_history=50, item_facts=[]), "default": None,
                      "prefix": PromptConfig(max_history=20, max_prompt_tokens=384, item_facts=facts)}[arm]
            budget = dict(max_minutes=args.minutes, clock=CLOCK, save_steps=10**6, overwrite=True, keep_checkpoints=3,
                          save_minutes=args.minutes / 4 if args.curve_users else None)
            cfg = SFTConfig(data=str(data), output=str(model), **budget) if arm == "default" else SFTConfig(
                data=str(data), output=str(model), objective="prefix" if arm == "prefix" else "sequence",
                item_id="token" if arm == "token" else "title", item_text="init",  # the arms' recorded recipes
                prompt=prompt, max_steps=0, num_epochs=100,
                layers=args.layers, embedding_dropout=0.0, item_weight_decay=0.0, **budget)
            if args.layers is not None:
                cfg.layers = args.layers
            t0 = time.time()
            train(with_overrides(cfg, parse_overrides(args.sft)))
            sft_wall = time.time() - t0
            ev = run_evaluation(EvaluateConfig(
                model=str(model), max_users=args.users, ks=[1, 5, 10],
                baselines=[b for b in args.baselines.split(",") if b] if n == 0 else [],
                sasrec_seconds=args.sasrec_seconds))
            ev["sft_wall_seconds"] = sft_wall
            metrics_path.write_text(json.dumps({**read_json(metrics_path), "sft_wall_seconds": sft_wall}))
        ev = read_json(metrics_path)
        card = ModelCard.load(model).stats
        report["arms"][f"{name}/{label}"] = {k: ev.get(k) for k in (
            "users_evaluated", "users_in_split", "catalog_items", "results", "intervals", "paired_differences",
            "baselines_all_users", "sasrec", "genrec_users_per_second", "users_target_in_history", "slices")}
        report["arms"][f"{name}/{label}"]["training"] = {k: card.get(k) for k in (
            "train_seconds", "clock_seconds", "global_step", "train_examples", "target_tokens", "train_tokens",
            "stopped_by_clock", "train_loss")}
        for model_name, iv in ev["intervals"].items():
            row_name = f"genrec ({label})" if model_name == "genrec" else model_name
            diff = ev["paired_differences"].get(f"genrec - {model_name}", {}).get("NDCG@10")
            rows.append({
                "dataset": name, "model": row_name, "users": ev["users_evaluated"],
                "NDCG@10": fmt_ci(iv["NDCG@10"]), "HR@10": fmt_ci(iv["HR@10"]),
                "genrec - this (NDCG@10)": "" if diff is None else fmt_diff(diff),
                "CPU-minutes (train)": cpu_minutes(card, args.minutes) if model_name == "genrec" else
                (round(ev["sasrec"]["seconds"] / 60, 1) if model_name == "sasrec" and ev.get("sasrec") else ""),
            })
        for model_name, a in (ev.get("baselines_all_users") or {}).items():
            iv = a["intervals"]
            rows.append({"dataset": name, "model": f"{model_name} (all users)", "users": ev["users_in_split"],
                         "NDCG@10": fmt_ci(iv["NDCG@10"]), "HR@10": fmt_ci(iv["HR@10"]),
                         "genrec - this (NDCG@10)": "", "CPU-minutes (train)": ""})
        for group, sl in (ev.get("slices") or {}).get("target", {}).items():  # cold-item protocol
            for model_name, iv in sl["models"].items():
                rows.append({"dataset": name, "model": f"{'genrec (' + label + ')' if model_name == 'genrec' else model_name}"
                             f" [{group} targets]", "users": sl["users"], "NDCG@10": fmt_ci(iv["NDCG@10"]),
                             "HR@10": fmt_ci(iv["HR@10"]), "genrec - this (NDCG@10)": "", "CPU-minutes (train)": ""})
        if args.request and answers_requests(ModelCard.load(model)):
            report["arms"][f"{name}/{label}"]["request"] = request_rows(model, args, name, label, rows)
        if args.history_match != "0" and ModelCard.load(model).item_index().rules.one_token:
            report["arms"][f"{name}/{label}"]["history_match"] = history_rows(model, args, name, label, rows)
        if args.reasons and gives_reasons(ModelCard.load(model)):
            report["arms"][f"{name}/{label}"]["reasons"] = reason_grounding(model, args.reason_users)
        if args.curve_users and checkpoints(model):
            report["arms"][f"{name}/{label}"]["learning_curve"] = learning_curve(model, model / "curve",
                                                                               args.curve_users)
        from genrec.data.prepared import load_prepared

        cold = {d: load_prepared(work / d / "data").cold_items for d in args.datasets.split(",")}
        report["between_arms"] = paired_arms(work, args.datasets.split(","), cold)  # finished arms, pairwise
        write_results(args.name, report, rows)  # after each arm: a long run keeps what it finished
    for pair, d in report.get("between_arms", {}).items():
        print(f"{pair}: NDCG@10 {fmt_diff(d['NDCG@10'])} on the same {d['users']} users")


def cpu_minutes(stats: dict, budget: float) -> float | str:
    """The CPU-clock minutes an arm trained: recorded (`clock_seconds`), else its whole budget when the clock ended
    it; "" when neither is known (a run stopped by its step count before `clock_seconds` was recorded)."""
    if stats.get("clock_seconds") is not None:
        return round(stats["clock_seconds"] / 60, 1)
    return budget if stats.get("stopped_by_clock") else ""


def answers_requests(card) -> bool:
    """Trained with request lines, or item tokens (whose search matches a request's words to item texts)."""
    return bool(card.prompt.get("request_share")) or card.item_index().rules.one_token


def gives_reasons(card) -> bool:
    """Trained with reasons, or item tokens (whose reasons are explained: genrec/infer/explain.py)."""
    return bool(card.prompt.get("reason_share")) or card.with_reasons or card.item_index().rules.one_token


def reason_grounding(model: Path, users: int) -> dict:
    """`genrec evaluate --with-reasons` of an arm on `users` test users (kept in <arm>/eval-reasons): how often the
    top-1 item's reason names a non-catalog title or an unsupported attribute, the item, or a history item."""
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation
    from genrec.files import read_json

    path = model / "eval-reasons" / "metrics.json"
    if not path.is_file():
        run_evaluation(EvaluateConfig(model=str(model), max_users=users, baselines=[], ks=[10], with_reasons=True,
                                      output=str(path.parent)))
    return read_json(path)["reason_grounding"]


def request_rows(model: Path, args, name: str, label: str, rows: list[dict]) -> dict:
    """`genrec evaluate --task request` of an arm (every chosen user whose target has attributes; kept in
    <arm>/eval-request) and, when the model writes reasons, their grounding on --reason-users users; the table's
    rows added to `rows`."""
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation
    from genrec.files import read_json
    from genrec.model_dir import ModelCard
    from genrec.metrics import fmt_ci, fmt_diff

    card = ModelCard.load(model)
    tried = {}
    reads = bool(card.prompt.get("request_share"))  # else a request is its words matched: W = 0 cannot answer
    for w in [float(x) for x in args.text_match.split(",") if float(x) or reads]:  # on validation users only
        path = model / f"eval-request-valid-{w:g}" / "metrics.json"
        if not path.is_file():
            run_evaluation(EvaluateConfig(model=str(model), task="request", split="valid", ks=[10], baselines=[],
                                          max_users=args.tune_users, text_match=w, output=str(path.parent)))
        tried[w] = read_json(path)["results"]["genrec"]["NDCG@10"]
    text_match = max(tried, key=lambda w: (tried[w], -w))
    out = {}
    for key, kw in (("ranking", dict(max_users=args.users, baselines=["popular", "sasrec"])),
                    ("reasons", dict(max_users=args.reason_users, baselines=[], with_reasons=True))):
        path = model / f"eval-request-{key}-{text_match:g}" / "metrics.json"
        if key == "reasons" and not card.prompt.get("reason_share"):
            continue
        if not path.is_file():
            run_evaluation(EvaluateConfig(model=str(model), task="request", ks=[1, 5, 10], output=str(path.parent),
                                          text_match=text_match, **kw))
        out[key] = read_json(path)
    ev = out["ranking"]
    for model_name, iv in ev["intervals"].items():
        diff = ev["paired_differences"].get(f"genrec - {model_name}", {}).get("NDCG@10")
        shown = f"genrec ({label}), history + request, text_match {text_match:g}" if model_name == "genrec" else \
            model_name
        rows.append({"dataset": name, "model": shown + " [request task]",
                     "users": ev["users_evaluated"], "NDCG@10": fmt_ci(iv["NDCG@10"]), "HR@10": fmt_ci(iv["HR@10"]),
                     "genrec - this (NDCG@10)": "" if diff is None else fmt_diff(diff), "CPU-minutes (train)": ""})
    return {"text_match_tried": tried, "text_match": text_match, "users_evaluated": ev["users_evaluated"],
            "intervals": ev["intervals"],
            "paired_differences": ev["paired_differences"],
            "reason_grounding": out.get("reasons", {}).get("reason_grounding"),
            "reason_users": out.get("reasons", {}).get("users_evaluated")}


def history_rows(model: Path, args, name: str, label: str, rows: list[dict]) -> dict:
    """`genrec evaluate --history-match W` of an item-token arm: W chosen on --tune-users validation users (kept in
    <arm>/eval-history-valid-W), then every chosen test user at that W (<arm>/eval-history-test-W), paired against
    the arm's own evaluation without it (the same users and targets), and beside the baselines (SASRec from its
    cache: the arm's own); its slices (tail, cold targets) are kept with their paired differences, and those of
    the tail and cold targets become rows."""
    from genrec import metrics
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation
    from genrec.files import read_json, read_jsonl
    from genrec.metrics import fmt_ci, fmt_diff

    tried = {}
    for w in [float(x) for x in args.history_match.split(",")]:
        path = model / f"eval-history-valid-{w:g}" / "metrics.json"
        if not path.is_file():
            run_evaluation(EvaluateConfig(model=str(model), split="valid", ks=[10], baselines=[],
                                          max_users=args.tune_users, history_match=w, output=str(path.parent)))
        tried[w] = read_json(path)["results"]["genrec"]["NDCG@10"]
    best = max(tried, key=lambda w: (tried[w], -w))
    path = model / f"eval-history-test-{best:g}" / "metrics.json"
    if not path.is_file():
        run_evaluation(EvaluateConfig(model=str(model), max_users=args.users, ks=[1, 5, 10], history_match=best,
                                      baselines=[b for b in args.baselines.split(",") if b], output=str(path.parent)))
    ev = read_json(path)
    with_, without = (read_jsonl(path.parent.parent / d / "recommendations.jsonl")
                      for d in (path.parent.name, "eval-test"))
    assert [(r["user_id"], r["target"]) for r in with_] == [(r["user_id"], r["target"]) for r in without]
    targets = [r["target"] for r in with_]
    per = [metrics.per_user(metrics.target_ranks([r["recommended"] for r in rs], targets), [10])
           for rs in (with_, without)]
    diff = metrics.paired_difference(*per, metrics.bootstrap_draws(len(targets), seed=42))
    rows.append({"dataset": name, "model": f"genrec ({label}) + history match {best:g} (chosen on validation)",
                 "users": ev["users_evaluated"], "NDCG@10": fmt_ci(ev["intervals"]["genrec"]["NDCG@10"]),
                 "HR@10": fmt_ci(ev["intervals"]["genrec"]["HR@10"]),
                 "genrec - this (NDCG@10)": f"{fmt_diff(diff['NDCG@10'])} (this minus the arm without it)",
                 "CPU-minutes (train)": ""})
    everyone = {"users": ev["users_evaluated"], "models": ev["intervals"], "paired": ev["paired_differences"]}
    for kind, group in (("", "all"), ("target_popularity", "tail"), ("target", "cold")):
        sl = everyone if group == "all" else (ev.get("slices") or {}).get(kind, {}).get(group)
        for pair, d in (sl or {}).get("paired", {}).items():
            rows.append({"dataset": name, "model": f"genrec ({label}) + history match {best:g} [{group} targets]",
                         "users": sl["users"], "NDCG@10": fmt_ci(sl["models"]["genrec"]["NDCG@10"]), "HR@10": "",
                         "genrec - this (NDCG@10)": f"{fmt_diff(d['NDCG@10'])} ({pair})", "CPU-minutes (train)": ""})
    return {"tried": tried, "history_match": best, "users_evaluated": ev["users_evaluated"],
            "intervals": ev["intervals"], "minus_without": diff, "slices": ev.get("slices")}


if __name__ == "__main__":
    main()
