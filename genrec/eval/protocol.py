"""`genrec evaluate`: leave-one-out, full ranking over the catalog, the LLM beside baselines on the same users.

Metrics per model: HR@K, NDCG@K (one relevant item: 1/log2(rank+1)), MRR over the top max(K) list (0 when the
target is not in it), validity (share of recommended ids that are catalog items), coverage (distinct recommended
items in top max(K) / catalog size), and the share of split users evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

from genrec import metrics
from genrec.eval.baselines import BASELINES, content_rankings, popular_rankings
from genrec.config import EvaluateConfig, FusionConfig, to_dict
from genrec.data.prepared import load_prepared
from genrec.errors import GenrecError
from genrec.files import atomic_file, write_json, write_jsonl
from genrec.model_dir import ModelCard
from genrec.infer.recommender import Query, Recommender, Search, hybrid_order, narrowed
from genrec.infer.retriever import Retriever, parse_candidate_sizes, parse_candidates


PERTURBATIONS = ("insert", "drop", "shuffle")


def parse_perturb(spec: str | None) -> tuple[str, float] | None:
    """'insert:0.2' | 'drop:0.2' | 'shuffle' -> (kind, fraction)."""
    if not spec:
        return None
    kind, _, frac = spec.partition(":")
    if kind not in PERTURBATIONS:
        raise GenrecError(f"unknown perturbation {spec!r} (insert:F, drop:F or shuffle)")
    try:
        f = float(frac) if frac else (1.0 if kind == "shuffle" else 0.2)
    except ValueError:
        raise GenrecError(f"perturbation fraction must be a number, got {frac!r}") from None
    if not 0 < f <= 1:
        raise GenrecError("perturbation fraction must be in (0, 1]")
    return kind, f


def perturb_history(history: list[str], kind: str, frac: float, items: list[str], rng: random.Random) -> list[str]:
    """Noisy behaviour: random catalog items inserted at random places, items dropped (one always stays), or
    the order shuffled. The same rng feeds genrec and SASRec, so both see identical noisy histories."""
    h = list(history)
    m = max(1, round(frac * len(h))) if h else 0
    if kind == "insert":
        for _ in range(m):
            h.insert(rng.randrange(len(h) + 1), rng.choice(items))
    elif kind == "drop":
        for _ in range(min(m, len(h) - 1)):
            del h[rng.randrange(len(h))]
    else:
        rng.shuffle(h)
    return h


def select_rows(n_rows: int, max_users: int | None, seed: int) -> list[int]:
    idx = list(range(n_rows))
    if max_users is not None and max_users < n_rows:
        idx = sorted(random.Random(seed).sample(idx, max_users))
    return idx


def markdown_table(results: dict[str, dict], ks: list[int]) -> str:
    cols = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR", "validity", "coverage"]
    cols += [c for c in ("ILD", "novelty", "pop_pct", "long_tail") if all(c in m for m in results.values())]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def _bar_chart(intervals: dict[str, dict], k: int, path: Path, title: str, slices: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(intervals)
    fig, axes = plt.subplots(1, 2 if slices else 1, figsize=(12 if slices else 6, 3.5), squeeze=False)
    ax = axes[0][0]
    if slices:  # NDCG@k per user group and model, with intervals
        sx = axes[0][1]
        groups = [(kind, g) for kind, gs in slices.items() for g in gs]
        width = 0.8 / max(len(names), 1)
        for m, name in enumerate(names):
            vals = [slices[kind][g]["models"][name][f"NDCG@{k}"] for kind, g in groups]
            sx.bar([i + (m - (len(names) - 1) / 2) * width for i in range(len(groups))], [v["mean"] for v in vals],
                   width=width, label=name, capsize=2,
                   yerr=[[v["mean"] - v["lo"] for v in vals], [v["hi"] - v["mean"] for v in vals]])
        sx.set_xticks(range(len(groups)), [f"{g}\n({slices[kind][g]['users']})" for kind, g in groups], fontsize=7)
        sx.set_title(f"NDCG@{k} by history length and target popularity (users)", fontsize=9)
        sx.legend(fontsize=7)
        sx.grid(axis="y", alpha=0.3)
    x = range(len(names))
    for off, m in ((-0.2, f"HR@{k}"), (0.2, f"NDCG@{k}")):
        s = [intervals[n][m] for n in names]
        ax.bar([i + off for i in x], [v["mean"] for v in s], width=0.4, label=m,
               yerr=[[v["mean"] - v["lo"] for v in s], [v["hi"] - v["mean"] for v in s]], capsize=3)
    ax.set_xticks(list(x), names)
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def split_users(data, rows, split: str, exclude_seen: bool) -> tuple[list[str], list[list[str]], list[set[str]]]:
    """Per row of a split: the target, the user's items before it, and the items never to recommend. Earlier
    items are excluded except the target itself: a re-consumed target stays rankable (excluding it would make it a
    certain miss); such users are counted in the report."""
    targets = [r["target"] for r in rows]
    hist = [data.before_target(data.users[r["user_id"]], split) for r in rows]
    seen = [set(h) - {t} if exclude_seen else set() for h, t in zip(hist, targets)]
    return targets, hist, seen


def history_queries(rows, chosen: list[int], seen: list[set[str]]) -> list[Query]:
    """The requests of the chosen rows of a split: each user's history before the target, its context, ratings."""
    return [Query(user_id=rows[i]["user_id"], history=rows[i]["history"], history_ts=rows[i]["history_ts"],
                  context=json.loads(rows[i]["context"]), seen=seen[i], ratings=rows[i].get("history_ratings"))
            for i in chosen]


def run_evaluation(cfg: EvaluateConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    if not cfg.ks or min(cfg.ks) < 1:
        raise GenrecError("--k needs positive cutoffs, e.g. 1,5,10,20")
    parse_perturb(cfg.perturb)  # a bad spec fails before any model is loaded
    if cfg.popularity_penalty < 0:
        raise GenrecError(f"--popularity-penalty must be >= 0, got {cfg.popularity_penalty}")
    unknown = set(cfg.baselines) - set(BASELINES)
    if unknown:
        raise GenrecError(f"unknown baseline {sorted(unknown)[0]!r} ({', '.join(BASELINES)})")
    rec = Recommender(cfg.model, cfg.dtype, cfg.backend, cfg.vllm, adapter=cfg.adapter)
    data = load_prepared(cfg.data or rec.card.data)
    transfer = rec.use_data(data, log)
    task = cfg.task or rec.builder.cfg.task
    if task not in rec.builders:
        raise GenrecError(f"{cfg.model} was not trained for task {task!r} (it has: {', '.join(rec.builders)})")
    builder = rec.builders[task]
    if builder.task.scores_candidates:
        return evaluate_candidates(rec, cfg, task, data, log)
    rows = data.split(cfg.split)
    kmax = max(cfg.ks)
    catalog = set(rec.index.item_ids)
    cold = builder.task.takes_request  # cold-start users who only say what they want
    if cold and cfg.perturb:
        raise GenrecError("--perturb needs a model that reads histories (this one answers requests)")
    baselines = [b for b in cfg.baselines if not (cold and b in ("sasrec", "content"))]  # they read histories
    if data.cold_items and not cold and cfg.baselines and "content" not in baselines:
        baselines.append("content")  # the cold-item protocol: the baseline that can rank unseen items
    if "content" in baselines and data.manifest.get("columns", {}).get("title") is None:
        raise GenrecError("the content baseline reads item text, and this catalog has none (--baselines "
                          "popular,sasrec)")
    # A hybrid (rerank, or generation within the retriever's K) is always shown beside its retriever alone.
    cand_k = parse_candidates(cfg.candidates)
    rerank = builder.task.ranks_candidates
    if cand_k and rerank:
        raise GenrecError(f"--candidates is for generative models: {cfg.model} reranks its retriever's top "
                          f"{builder.cfg.rerank_candidates} already")
    # A model with a tuned hybrid is evaluated as it serves (its K; "--candidates catalog" for the whole catalog);
    # the fused row's weight: asked for, else the tuned one, else 1 (fixed in advance)
    tuned = rec.fusion or {}
    cand_k = None if rerank else (tuned.get("candidates") if cand_k is None else cand_k) or None
    fusion = {"weight": cfg.retriever_weight, "source": "--retriever-weight"} if cfg.retriever_weight is not None \
        else {"weight": tuned["weight"], "source": f"tuned on {tuned.get('users')} validation users"} if tuned \
        else {"weight": 1.0, "source": "fixed in advance"}
    search = Search.of(cfg, k=kmax, with_reasons=False)  # with_reasons here: measure the reasons (below)
    rec.recommend([], search)  # its checks of these settings, before any work
    hybrid_k = builder.cfg.rerank_candidates if rerank else cand_k
    if rerank and rec.retriever is None:
        raise GenrecError(f"{cfg.model} is a rerank model without its retriever ({cfg.model}/retriever is missing)")
    if hybrid_k is not None and "sasrec" not in baselines:
        baselines.append("sasrec")

    # Every user of the split (baselines are cheap and run on all of them); the LLM on a seeded sample.
    all_targets, all_hist, all_seen = split_users(data, rows, cfg.split, cfg.exclude_seen and not cold)
    chosen = select_rows(len(rows), cfg.max_users, cfg.seed)
    requests = []
    rng = random.Random(cfg.seed)
    if cold:
        kept = []
        for i in chosen:
            text = builder.task.request_for(rows[i]["target"], rng)
            if text is not None:
                kept.append(i)
                requests.append(Query(user_id=rows[i]["user_id"], text=text,
                                        context=json.loads(rows[i]["context"])))
        chosen = kept
    else:
        requests = history_queries(rows, chosen, all_seen)
    targets = [all_targets[i] for i in chosen]
    seen = [all_seen[i] for i in chosen]
    repeats = sum(1 for i in chosen if all_targets[i] in set(all_hist[i])) if not cold else 0

    t0 = time.time()
    extra_lists: dict[str, list[list[str]]] = {}
    if hybrid_k is not None:  # one scoring of the K: the LLM's order and its fusion with the retriever's scores
        ranked, extra_lists["genrec x sasrec"] = _hybrid(
            rec, requests, cfg, None if rerank else cand_k, fusion["weight"], kmax,
            f"genrec {'rerank' if rerank else f'within {cand_k}'} {cfg.split}")
    else:
        ranked = _genrec_ranked(rec, requests, cfg, search, f"genrec {cfg.split}")
    gen_seconds = time.time() - t0
    grounding = None
    if cfg.with_reasons:  # the top-1 item's reason per user, checked against the catalog and the history
        cases = []
        for start in range(0, len(requests), cfg.batch_size):
            chunk = requests[start:start + cfg.batch_size]
            for req, res in zip(chunk, rec.recommend(chunk, Search(k=1, beam_width=cfg.beam_width, exclude_seen=cfg.exclude_seen,
                                                                    with_reasons=True))):
                top = res["recommendations"][0]
                cases.append((top["reason"], top["item_id"], req.history[-builder.cfg.max_history:]))
        grounding = metrics.reason_grounding(cases, rec.catalog)
    lines = [{"user_id": r.user_id, "target": t, "recommended": ids} for r, t, ids in zip(requests, targets, ranked)]
    counts = data.training_counts()
    lists = {"genrec": ranked, **extra_lists}
    everyone: dict[str, list[list[str]]] = {}  # baselines ranked for every user of the split
    if "popular" in baselines:
        everyone["popular"] = popular_rankings(counts, all_seen, kmax)
    if "content" in baselines:
        everyone["content"] = content_rankings(data.catalog, all_hist, all_seen, kmax)
    # Noisy behaviour (--perturb): the same noisy histories for genrec and SASRec, seen-item exclusion unchanged.
    perturb = parse_perturb(cfg.perturb)
    histories = [all_hist]
    if perturb:
        prng = random.Random(cfg.seed + 1)
        noisy_chosen = [perturb_history(all_hist[i], *perturb, rec.index.item_ids, prng) for i in chosen]
        histories.append(noisy_chosen)
        noisy = [Query(user_id=r.user_id, history=h, context=r.context, seen=r.seen)
                 for r, h in zip(requests, noisy_chosen)]
        lists["genrec~perturbed"] = _genrec_ranked(rec, noisy, cfg, dataclasses.replace(search, candidates=0),
                                                   f"genrec {cfg.split} ({cfg.perturb})")
    sasrec_facts, recall = None, None
    if "sasrec" in baselines:
        retriever, sasrec_facts = _baseline_retriever(rec, data, cfg, transfer, log)
        sas = _sasrec_ranked(retriever, histories, [all_seen, seen], max(kmax, hybrid_k or 0))
        if hybrid_k is not None:  # the ceiling of any reranker: the target among the retriever's K
            recall = {"k": hybrid_k, "users": sum(t in set(r[:hybrid_k]) for r, t in zip(sas[0], all_targets))
                      / len(all_targets), "llm_users": sum(all_targets[i] in set(sas[0][i][:hybrid_k])
                                                           for i in chosen) / len(chosen)}
        everyone["sasrec"] = [r[:kmax] for r in sas[0]]
        if hybrid_k is not None:  # the chance level of a reranker: the same K candidates in a seeded random order
            srng = random.Random(cfg.seed + 2)
            lists[f"sasrec top-{hybrid_k} shuffled"] = [
                (srng.sample(r[:hybrid_k], len(r[:hybrid_k])) + r[hybrid_k:])[:kmax] for r in (sas[0][i] for i in chosen)]
        if perturb:
            lists["sasrec~perturbed"] = [r[:kmax] for r in sas[1]]
    for name, rk in everyone.items():
        lists[name] = [rk[i] for i in chosen]
    full = {}
    per_user_values = {}
    for name, rk in lists.items():
        full[name] = metrics.rank_metrics(rk, targets, cfg.ks, catalog)
        extra, target_pct = metrics.beyond_accuracy(rk, targets, counts, rec.catalog)
        full[name].update(extra)
        per_user_values[name] = metrics.per_user(metrics.target_ranks(rk, targets), cfg.ks)
    results = {n: m for n, m in full.items() if "~" not in n}
    draws = metrics.bootstrap_draws(len(targets), seed=cfg.seed)
    intervals = {n: metrics.summary(per_user_values[n], draws) for n in results}
    k_main = 10 if 10 in cfg.ks else kmax
    paired = {f"genrec - {n}": metrics.paired_difference(per_user_values["genrec"], per_user_values[n], draws)
              for n in results if n != "genrec"}
    for n in extra_lists:  # does the LLM add anything to its retriever?
        if "sasrec" in results:
            paired[f"{n} - sasrec"] = metrics.paired_difference(per_user_values[n], per_user_values["sasrec"], draws)
    slices = user_slices([len(all_hist[i]) for i in chosen], targets, counts, per_user_values, results, k_main,
                         cfg.seed, data.cold_items) if not cold else {}
    all_users = {}
    if everyone:
        all_draws = metrics.bootstrap_draws(len(rows), seed=cfg.seed)
        for name, rk in everyone.items():
            all_users[name] = {"metrics": metrics.rank_metrics(rk, all_targets, cfg.ks, catalog),
                               "intervals": metrics.summary(
                                   metrics.per_user(metrics.target_ranks(rk, all_targets), cfg.ks), all_draws)}
    perturbation = None
    if perturb:
        perturbation = {"spec": cfg.perturb, "models": {
            n: {m: {"clean": full[n][m], "perturbed": full[f"{n}~perturbed"][m],
                    "drop": full[n][m] - full[f"{n}~perturbed"][m]} for m in ("HR@" + str(kmax), "NDCG@" + str(kmax), "MRR")}
            for n in ("genrec", "sasrec") if f"{n}~perturbed" in full}}

    md = markdown_table(results, cfg.ks)
    report = {
        "split": cfg.split, "main_k": k_main, "users_evaluated": len(chosen), "users_in_split": len(rows),
        "fraction_evaluated": len(chosen) / len(rows), "catalog_items": len(catalog),
        "users_target_in_history": repeats,
        "genrec_seconds": round(gen_seconds, 2), "genrec_users_per_second": round(len(chosen) / gen_seconds, 3),
        "results": results, "intervals": intervals, "paired_differences": paired, "slices": slices,
        "baselines_all_users": all_users, "sasrec": sasrec_facts, "retriever_recall": recall,
        "hybrid": None if hybrid_k is None else ("rerank" if rerank else "generation within candidates"),
        "fusion": None if hybrid_k is None else {**fusion, "candidates": hybrid_k},
        "targets_pop_pct": target_pct, "perturbation": perturbation,
        "reason_grounding": grounding, "task": task, "data": str(data.path), "catalog_transfer": transfer,
        "settings": to_dict(cfg),
        "markdown": md, "intervals_markdown": intervals_markdown(intervals, paired, k_main, len(chosen)),
        "verdict": verdict(paired, k_main, len(chosen)),
    }
    return write_report(cfg, report, ranking_markdown(report, cfg, k_main), "recommendations.jsonl", lines, log,
                        chart=lambda path: _bar_chart(intervals, k_main, path, f"{cfg.split}: {len(chosen)} users, "
                                                      "95% bootstrap intervals", slices))


def ranking_markdown(report: dict, cfg: EvaluateConfig, k: int) -> str:
    """metrics.md of a ranking evaluation: the protocol in one line, the table, the intervals and every extra
    section the report has (slices, baselines on all users, the retriever's ceiling, SASRec, perturbation,
    reasons)."""
    r = report
    parts = [f"Split `{cfg.split}`: {r['users_evaluated']}/{r['users_in_split']} users (seeded sample), full ranking "
             f"over {r['catalog_items']} items, exclude seen = {cfg.exclude_seen} (the target stays rankable; "
             f"{r['users_target_in_history']} users' target is also in their history). Test targets' mean popularity "
             f"percentile: {r['targets_pop_pct']:.3f}.\n\n{r['markdown']}\n\n", r["intervals_markdown"]]
    if r["slices"]:
        parts.append("\n" + slices_markdown(r["slices"], k))
    if r["baselines_all_users"]:
        parts.append(f"\nBaselines on all {r['users_in_split']} users of the split:\n\n| model | NDCG@{k} | HR@{k} |\n"
                     "|---|---|---|\n" + "".join(
                         f"| {n} | {metrics.fmt_ci(a['intervals'][f'NDCG@{k}'])} | "
                         f"{metrics.fmt_ci(a['intervals'][f'HR@{k}'])} |\n" for n, a in r["baselines_all_users"].items()))
    recall, sas = r["retriever_recall"], r["sasrec"]
    if recall:
        parts.append(f"\nHybrid ({r['hybrid']}, K={recall['k']}): the retriever's top {recall['k']} holds the "
                     f"target for {recall['llm_users']:.3f} of these users ({recall['users']:.3f} of all): the "
                     "ceiling of HR@K for any reranker of its candidates. genrec x sasrec: log p_LLM + "
                     f"{r['fusion']['weight']:g} x log softmax(SASRec) over the K ({r['fusion']['source']}).\n")
    if sas:
        parts.append(f"\nSASRec ({sas['source']}): {sas['epochs']} epochs in {sas['seconds']}s, "
                     + ("**capped** by its time limit (not converged)" if sas["capped"]
                        else "early-stopped on validation NDCG@10") + ".\n")
    if r["perturbation"]:
        parts.append(f"\nPerturbation `{cfg.perturb}` (same noisy histories for every model):\n\n"
                     "| model | metric | clean | perturbed | drop |\n|---|---|---|---|---|\n" + "".join(
                         f"| {n} | {m} | {v['clean']:.4f} | {v['perturbed']:.4f} | {v['drop']:.4f} |\n"
                         for n, ms in r["perturbation"]["models"].items() for m, v in ms.items()))
    if r["reason_grounding"]:
        parts.append("\nReasons (top-1 item per user): " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["reason_grounding"].items()) + "\n")
    return "".join(parts)


HISTORY_BUCKETS = ((0, 10, "history <10"), (10, 51, "history 10-50"), (51, 10**9, "history >50"))


def user_slices(history_lengths: list[int], targets: list[str], counts: Counter, per_user: dict, models: dict,
                k: int, seed: int, cold_items: frozenset = frozenset()) -> dict:
    """NDCG@k / HR@k with intervals per history-length bucket, per target-popularity tier and (cold-item protocol)
    for cold and warm targets, for every model: where the LLM helps (short histories, cold items) is what users of
    LLM recommenders want to know."""
    import numpy as np

    tier = metrics.popularity_tiers(counts)
    groups = {"history_length": {name: [i for i, n in enumerate(history_lengths) if lo <= n < hi]
                                 for lo, hi, name in HISTORY_BUCKETS},
              "target_popularity": {t: [i for i, x in enumerate(targets) if tier.get(x, "tail") == t]
                                    for t in ("head", "torso", "tail")}}
    if cold_items:  # items held out of training (`genrec data prepare --cold-items`)
        groups["target"] = {"cold": [i for i, x in enumerate(targets) if x in cold_items],
                            "warm": [i for i, x in enumerate(targets) if x not in cold_items]}
    out: dict = {}
    for kind, gs in groups.items():
        out[kind] = {}
        for g, idx in gs.items():
            if not idx:
                continue
            draws = metrics.bootstrap_draws(len(idx), seed=seed)
            sel = np.array(idx)
            out[kind][g] = {"users": len(idx), "models": {
                name: metrics.summary({m: per_user[name][m][sel] for m in (f"NDCG@{k}", f"HR@{k}")}, draws)
                for name in models}}
    return out


def slices_markdown(slices: dict, k: int) -> str:
    names = list(next(iter(next(iter(slices.values())).values()))["models"]) if slices else []
    lines = [f"NDCG@{k} by user group (95% bootstrap intervals):\n", "| group | users | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for kind, gs in slices.items():
        for g, s in gs.items():
            lines.append(f"| {g} | {s['users']} | " + " | ".join(
                metrics.fmt_ci(s["models"][n][f"NDCG@{k}"]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def verdict(paired: dict, k: int, n_users: int) -> str:
    """One line saying what the comparison shows: better, worse, or not distinguishable on these users."""
    if not paired:
        return f"genrec was evaluated on {n_users} users; no baseline to compare with."
    parts = []
    for name, d in paired.items():
        if not name.startswith("genrec - "):
            continue
        x = d[f"NDCG@{k}"]
        word = ("better than" if x["lo"] > 0 else "worse than" if x["hi"] < 0 else "not distinguishable from")
        parts.append(f"{word} {name.removeprefix('genrec - ')} (NDCG@{k} {x['diff']:+.4f}, 95% CI "
                     f"[{x['lo']:+.4f}, {x['hi']:+.4f}])")
    return f"On these {n_users} users genrec is " + "; ".join(parts) + "."


def intervals_markdown(intervals: dict, paired: dict, k: int, n_users: int) -> str:
    """Means with 95% bootstrap intervals, and genrec minus each baseline on the same users (* = excludes 0)."""
    out = [f"95% bootstrap intervals ({n_users} users resampled, paired across models):\n",
           f"| model | NDCG@{k} | HR@{k} | MRR |", "|---|---|---|---|"]
    for n, s in intervals.items():
        out.append(f"| {n} | {metrics.fmt_ci(s[f'NDCG@{k}'])} | {metrics.fmt_ci(s[f'HR@{k}'])} | "
                   f"{metrics.fmt_ci(s['MRR'])} |")
    if paired:
        out += ["", f"| paired difference | NDCG@{k} | HR@{k} |", "|---|---|---|"]
        for n, d in paired.items():
            out.append(f"| {n} | {metrics.fmt_diff(d[f'NDCG@{k}'])} | {metrics.fmt_diff(d[f'HR@{k}'])} |")
    return "\n".join(out) + "\n"


def evaluate_candidates(rec: Recommender, cfg: EvaluateConfig, task: str, data, log) -> dict:
    """Scoring tasks on each user's held-out item: the task says which candidates to score and how to judge the
    scores (tasks.py: preference by AUC / log-loss against sampled negatives, rating by RMSE / MAE)."""
    from tqdm.auto import tqdm

    rule = rec.builders[task].task
    rows = data.split(cfg.split)
    chosen = [rows[i] for i in select_rows(len(rows), cfg.max_users, cfg.seed)]
    rng = random.Random(cfg.seed)
    requests, cands, truth = [], [], []
    for row in chosen:
        c, y = rule.held_out(row, data, rng, cfg.negatives)
        requests.append(Query(user_id=row["user_id"], history=row["history"], history_ts=row["history_ts"],
                              context=json.loads(row["context"]), ratings=row.get("history_ratings")))
        cands.append(c)
        truth.append(y)
    scores: list[list[float]] = []
    bar = tqdm(total=len(requests), desc=f"{task} {cfg.split}", unit="user")
    for start in range(0, len(requests), cfg.batch_size):
        scores += rec.score(task, requests[start:start + cfg.batch_size], cands[start:start + cfg.batch_size])
        bar.update(len(requests[start:start + cfg.batch_size]))
    bar.close()
    results, cols, what = rule.judge(scores, truth, chosen, cands, data, cfg.split)
    report = {"task": task, "split": cfg.split, "users_evaluated": len(chosen), "users_in_split": len(rows),
              "negatives_per_positive": cfg.negatives if task == "preference" else None, "results": results,
              "settings": to_dict(cfg)}
    md = f"| model | {' | '.join(cols)} |\n|---|" + "---|" * len(cols) + "\n" + "".join(
        f"| {n} | " + " | ".join(f"{r[c]:.4f}" if c in r else "" for c in cols) + " |\n" for n, r in results.items())
    report["markdown"] = md
    return write_report(cfg, report, f"{task.capitalize()}, split `{cfg.split}`: {len(chosen)} users, {what}.\n\n{md}",
                        "scores.jsonl", [{"user_id": r.user_id, "candidates": c, "labels": y, "scores": p}
                                         for r, c, y, p in zip(requests, cands, truth, scores)], log)


def write_report(cfg: EvaluateConfig, report: dict, markdown: str, lines_name: str, lines: list[dict], log,
                 chart=None) -> dict:
    """The one way an evaluation leaves its results, each file written atomically into `cfg.output` (default
    <model>/eval-<split>): metrics.json (the report), metrics.md, the per-user lines and, when given,
    `chart(path)` drawing metrics.png. Returns the report with its `output` directory."""
    out = Path(cfg.output) if cfg.output else Path(cfg.model) / f"eval-{cfg.split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # an earlier run's: until this one's is written, none is there
    with atomic_file(out / "metrics.md") as fh:
        fh.write(markdown)
    write_jsonl(out / lines_name, lines)
    if chart is not None:
        chart(out / "metrics.png")
    # last: benchmarks (and people) take its presence as "this evaluation finished"
    write_json(out / "metrics.json", {k: v for k, v in report.items() if k not in ("markdown", "intervals_markdown",
                                                                                  "verdict")})
    if out.resolve() == (Path(cfg.model) / ModelCard.EVAL).resolve() and ModelCard.exists(cfg.model):
        ModelCard.load(cfg.model).write_readme()  # the model's README shows its latest test results
    log(f"report written to {out}/metrics.json, metrics.md" + (", metrics.png" if chart is not None else ""))
    return {**report, "output": str(out)}


def _batched(rec: Recommender, requests: list[Query], cfg: EvaluateConfig, desc: str, run) -> list:
    """`run(chunk)` (one result per request) over batches of similar prompt length (`length_batches`: little
    padding), with a progress bar; the results in request order."""
    from tqdm.auto import tqdm

    out: list = [None] * len(requests)
    bar = tqdm(total=len(requests), desc=desc, unit="user")
    for idx in rec.length_batches(requests, cfg.batch_size):
        for n, res in zip(idx, run([requests[n] for n in idx])):
            out[n] = res
        bar.update(len(idx))
    bar.close()
    return out


def _hybrid(rec: Recommender, requests: list[Query], cfg, K: int | None, weight: float, kmax: int,
            desc: str) -> tuple[list[list[str]], list[list[str]]]:
    """A hybrid's two lists per user from one scoring of the retriever's K (`candidate_scores`): the LLM's order
    alone and its fusion with the retriever (weight w), each followed by the retriever's order."""
    def run(chunk):
        return [(hybrid_order(c, 0.0, kmax), hybrid_order(c, weight, kmax))
                for c in rec.candidate_scores(chunk, kmax, cfg.exclude_seen, K, cfg.popularity_penalty)]

    pairs = _batched(rec, requests, cfg, desc, run)
    return [a for a, _ in pairs], [f for _, f in pairs]


def _genrec_ranked(rec: Recommender, requests: list[Query], cfg: EvaluateConfig, search: Search,
                   desc: str) -> list[list[str]]:
    return _batched(rec, requests, cfg, desc, lambda chunk: [[r["item_id"] for r in res["recommendations"]]
                                                             for res in rec.recommend(chunk, search)])


def _baseline_retriever(rec: Recommender | None, data, cfg: EvaluateConfig, transfer: bool,
                        log) -> tuple[Retriever, dict]:
    """The SASRec row: the model's own retriever when it has one (a hybrid is compared with exactly the retriever it
    reranks), else SASRec trained now on the training part of every sequence, early-stopped on validation."""
    if rec is not None and rec.retriever is not None and not transfer:
        return rec.retriever, {**rec.retriever.facts, "source": "the model's retriever"}
    r = Retriever.train(data, seed=cfg.seed, max_seconds=cfg.sasrec_seconds, dropout=cfg.sasrec_dropout, log=log)
    return r, {**r.facts, "source": "trained for this evaluation"}


def _sasrec_ranked(retriever: Retriever, histories: list[list[list[str]]], seen: list[list[set[str]]],
                   kmax: int) -> list[list[list[str]]]:
    """The retriever's top kmax for each history variant (excluding the matching `seen` sets)."""
    return [[[i for i, _ in row] for row in retriever.top(h, s, kmax)] for h, s in zip(histories, seen)]


def evaluate_baselines(data, cfg: EvaluateConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Most-popular and SASRec alone on every user of the split, under the protocol `run_evaluation` uses (full
    ranking, earlier items excluded, the target always rankable): the check that the baselines are as strong as
    the literature before anything is compared to them."""
    rows = data.split(cfg.split)
    kmax = max(cfg.ks)
    catalog = set(data.catalog)
    targets, hist, seen = split_users(data, rows, cfg.split, cfg.exclude_seen)
    lists, facts = {}, None
    if "popular" in cfg.baselines:
        lists["popular"] = popular_rankings(data.training_counts(), seen, kmax)
    if "sasrec" in cfg.baselines:
        retriever, facts = _baseline_retriever(None, data, cfg, False, log)
        (lists["sasrec"],) = _sasrec_ranked(retriever, [hist], [seen], kmax)
    draws = metrics.bootstrap_draws(len(rows), seed=cfg.seed)
    per = {n: metrics.per_user(metrics.target_ranks(rk, targets), cfg.ks) for n, rk in lists.items()}
    return {"split": cfg.split, "users": len(rows), "catalog_items": len(catalog),
            "results": {n: metrics.rank_metrics(rk, targets, cfg.ks, catalog) for n, rk in lists.items()},
            "intervals": {n: metrics.summary(v, draws) for n, v in per.items()},
            "paired_differences": {"sasrec - popular": metrics.paired_difference(per["sasrec"], per["popular"], draws)}
            if {"sasrec", "popular"} <= set(per) else {}, "sasrec": facts}


def tune_fusion(cfg: FusionConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Choose a hybrid's retriever weight w (and, for a generative model given several, its K) on validation users,
    never test ones: each user's candidates are scored once at the largest K (`candidate_scores`; a smaller K is
    the same scores cut to the retriever's first K, `narrowed`), every (K, w) ranks them (`hybrid_order`), and the
    best NDCG@10 (ties: the smaller w, then the smaller K) is written with its table to `<model>/fusion.json`,
    which generate, evaluate and serve then use by default. Why tune: the LLM's and the retriever's log-scores are
    on different scales, and w = 1 fixed in advance left the fusion below SASRec alone on Scientific (-0.0032
    NDCG@10, paired); why K too: a larger K lets the LLM bring up items the retriever ranked lower."""
    if not cfg.weights or any(w < 0 for w in cfg.weights):
        raise GenrecError(f"--weights must be non-negative numbers, got {cfg.weights}")
    asked = parse_candidate_sizes(cfg.candidates) if cfg.candidates else None
    rec = Recommender(cfg.model, cfg.dtype, cfg.backend, cfg.vllm)
    if rec.retriever is None:
        raise GenrecError(f"{cfg.model} has no retriever to fuse with (train it with `genrec sft retriever=sasrec`)")
    rerank = rec.reranks
    if not rerank and not asked:
        raise GenrecError(f"a generative model's hybrid needs --candidates retriever:K, got {cfg.candidates!r}")
    sizes = [None] if rerank else asked
    rec.recommend([], k=1, candidates=sizes[-1])  # its checks of these settings (K within the catalog), before work
    data = load_prepared(rec.card.data)
    if rec.use_data(data):
        raise GenrecError(f"{cfg.model}'s training data no longer matches its catalog")
    rows = data.split("valid")
    targets, _, seen = split_users(data, rows, "valid", True)
    chosen = select_rows(len(rows), cfg.max_users, cfg.seed)
    if not chosen:
        raise GenrecError(f"{data.path} has no validation users to tune on")
    scored = _batched(rec, history_queries(rows, chosen, seen), cfg, "scoring candidates (valid)",
                      lambda chunk: rec.candidate_scores(chunk, 10, True, sizes[-1]))
    targets = [targets[i] for i in chosen]

    def measure(lists):
        v = metrics.per_user(metrics.target_ranks(lists, targets), [10])
        return {"NDCG@10": round(float(v["NDCG@10"].mean()), 5), "HR@10": round(float(v["HR@10"].mean()), 5)}

    if rerank:
        log("note: a rerank model learnt these validation items, so the weight chosen on them leans toward the LLM")
    table = []
    for K in sizes:
        at_k = scored if K is None or K == sizes[-1] else [narrowed(c, K) for c in scored]
        table += [{"candidates": K, "weight": w, **measure([hybrid_order(c, w, 10) for c in at_k])}
                  for w in sorted(set(cfg.weights))]
    best = max(table, key=lambda row: (row["NDCG@10"], -row["weight"], -(row["candidates"] or 0)))
    tuned = {"candidates": best["candidates"], "weight": best["weight"], "chosen_by": "NDCG@10", "split": "valid",
             "users": len(chosen), "seed": cfg.seed, "table": table,
             "retriever_alone": measure([(c["items"] + c["rest"])[:10] for c in scored])}
    write_json(Path(cfg.model) / ModelCard.FUSION, tuned)
    for row in table:
        log(("" if rerank else f"K = {row['candidates']}, ") + f"w = {row['weight']:g}: NDCG@10 {row['NDCG@10']:.4f}"
            f"  HR@10 {row['HR@10']:.4f}" + ("  <- chosen" if row is best else ""))
    log(f"retriever alone: NDCG@10 {tuned['retriever_alone']['NDCG@10']:.4f}; wrote {cfg.model}/{ModelCard.FUSION}")
    return tuned
