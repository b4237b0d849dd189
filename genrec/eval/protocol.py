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
from collections.abc import Sequence

from genrec import metrics
from genrec.config import EvaluateConfig, to_dict
from genrec.data.prepared import load_prepared
from genrec.errors import GenrecError
from genrec.eval.baselines import (BASELINES, NO_REQUEST, READ_ONLY, REQUEST_TEXT, content_rankings, popular_rankings,
                                   request_text_rankings, sasrec_rankings, sasrec_retriever)
from genrec.eval.report import (
    bar_chart,
    intervals_markdown,
    markdown_table,
    ranking_markdown,
    scores_markdown,
    user_slices,
    verdict,
    write_report,
)
from genrec.infer.query import Query, Search
from genrec.infer.recommender import Recommender
from genrec.infer.jobs import length_batches
from genrec.infer.hybrid import UNTUNED_FUSED_ROW_WEIGHT, candidate_scores, hybrid_order, retriever_weight
from genrec.infer.retriever import parse_candidates


# ------------------------------------------------------------------------------------------------ perturbations
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


# ------------------------------------------------------------------------------------------------ users
def select_rows(n_rows: int, max_users: int | None, seed: int) -> list[int]:
    idx = list(range(n_rows))
    if max_users is not None and max_users < n_rows:
        idx = sorted(random.Random(seed).sample(idx, max_users))
    return idx


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


@dataclasses.dataclass
class Users:
    """The users of a split: every one of them (`all_*`: the baselines are cheap and rank them all) and the seeded
    sample the LLM ranks (`chosen` rows, their `requests`, `targets` and `seen` sets)."""

    rows: Sequence[dict]  # the split's rows
    all_targets: list[str]
    all_hist: list[list[str]]
    all_seen: list[set[str]]
    chosen: list[int]
    requests: list[Query]
    targets: list[str]
    seen: list[set[str]]
    repeats: int  # chosen users whose target is also in their history


# ------------------------------------------------------------------------------------------------ the protocol
@dataclasses.dataclass
class Plan:
    """What a ranking evaluation runs, settled from the settings and the model before any work."""

    task: str
    kmax: int
    cold: bool  # cold-start users who only say what they want (the task answers requests)
    asks: bool  # users with a history and a request for their target, beside the same model without the request
    baselines: list[str]
    rerank: bool  # a rerank model: the hybrid orders its retriever's top `hybrid_k`
    cand_k: int | None  # a generative model's hybrid: generation within the retriever's top K
    hybrid_k: int | None  # either hybrid's K; None: no hybrid
    fusion: dict  # the fused row's weight and where it came from
    search: Search
    perturb: tuple[str, float] | None


@dataclasses.dataclass
class Rankings:
    """Every model's top lists: `lists` on the chosen users (genrec, its fused rows, the baselines; runs on noisy
    histories as "<model>~perturbed"), `everyone` the baselines on every user of the split, and what the runs
    reported on the way."""

    lists: dict[str, list[list[str]]]
    fused: list[str]  # the hybrid's fused rows, each compared with its retriever alone
    genrec_seconds: float
    everyone: dict[str, list[list[str]]] = dataclasses.field(default_factory=dict)
    grounding: dict | None = None
    sasrec_facts: dict | None = None
    recall: dict | None = None


def run_evaluation(cfg: EvaluateConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Rank the split's users with genrec and the baselines, measure every list on the same users, write the
    report (`write_report`) and return it. Scoring tasks (preference, rating) go to `evaluate_candidates`."""
    _check_options(cfg)
    rec = Recommender(cfg.model, cfg.dtype, cfg.backend, cfg.vllm, adapter=cfg.adapter)
    data = load_prepared(cfg.data or rec.card.data)
    transfer = rec.use_data(data, log)
    task = _task(rec, cfg)
    if rec.builders[task].task.scores_candidates:
        return evaluate_candidates(rec, cfg, task, data, log)
    rows = data.split(cfg.split)
    plan = _plan(rec, cfg, task, data)
    users = _choose_users(rec, cfg, plan, data, rows)
    counts = data.training_counts()
    ranked = _rank(rec, cfg, plan, users, data, counts, transfer, log)
    report = _measure(rec, cfg, plan, users, ranked, counts, data, transfer)
    lines = [{"user_id": r.user_id, "target": t, "recommended": ids}
             for r, t, ids in zip(users.requests, users.targets, ranked.lists["genrec"])]
    k, title = report["main_k"], f"{cfg.split}: {len(users.chosen)} users, 95% bootstrap intervals"
    return write_report(cfg, report, ranking_markdown(report, cfg, k), "recommendations.jsonl", lines, log,
                        chart=lambda path: bar_chart(report["intervals"], k, path, title, report["slices"]))


def _check_options(cfg: EvaluateConfig) -> None:
    """The settings' own checks, before any model is loaded."""
    if not cfg.ks or min(cfg.ks) < 1:
        raise GenrecError("--k needs positive cutoffs, e.g. 1,5,10,20")
    parse_perturb(cfg.perturb)
    if cfg.popularity_penalty < 0:
        raise GenrecError(f"--popularity-penalty must be >= 0, got {cfg.popularity_penalty}")
    unknown = set(cfg.baselines) - set(BASELINES)
    if unknown:
        raise GenrecError(f"unknown baseline {sorted(unknown)[0]!r} ({', '.join(BASELINES)})")


# --task request on a sequence model trained with request lines, or on item tokens matching a request's words
# (`Recommender.answers_text`): history + request (`_plan`)
ASKED = "request"


def _task(rec: Recommender, cfg: EvaluateConfig) -> str:
    task = cfg.task or rec.builder.cfg.task
    if task == ASKED and task not in rec.builders and rec.answers_text(Search.of(cfg)):
        return rec.request_prompts.cfg.task  # its next-item lists, asked with a request after the history
    if task not in rec.builders:
        raise GenrecError(f"{cfg.model} was not trained for task {task!r} (it has: {', '.join(rec.builders)})")
    return task


def _plan(rec: Recommender, cfg: EvaluateConfig, task: str, data) -> Plan:
    """The baselines, the hybrid (its K and fused weight) and the search, each checked before any work. A hybrid
    (rerank, or generation within the retriever's K) is always shown beside its retriever alone."""
    builder = rec.builders[task]
    cold = builder.task.takes_request
    asks = cfg.task == ASKED and not cold  # history + a request for the target (a sequence model's request lines)
    if cold and cfg.perturb:
        raise GenrecError("--perturb needs a model that reads histories (this one answers requests)")
    baselines = _baselines(cfg, cold, data)
    cand_k = parse_candidates(cfg.candidates)
    rerank = builder.task.ranks_candidates
    if cand_k and rerank:
        raise GenrecError(f"--candidates is for generative models: {cfg.model} reranks its retriever's top "
                          f"{builder.cfg.rerank_candidates} already")
    # A model with a tuned hybrid is evaluated as it serves (its K; "--candidates catalog" for the whole catalog)
    tuned = rec.fusion or {}
    cand_k = None if rerank else (tuned.get("candidates") if cand_k is None else cand_k) or None
    search = Search.of(cfg, k=max(cfg.ks), with_reasons=False)  # with_reasons here: measure the reasons (below)
    rec.recommend([], search)  # its checks of these settings, before any work
    hybrid_k = builder.cfg.rerank_candidates if rerank else cand_k
    if rerank and rec.retriever is None:
        raise GenrecError(f"{cfg.model} is a rerank model without its retriever ({cfg.model}/retriever is missing)")
    if hybrid_k is not None and "sasrec" not in baselines:
        baselines.append("sasrec")
    return Plan(task=task, kmax=max(cfg.ks), cold=cold, asks=asks, baselines=baselines, rerank=rerank, cand_k=cand_k,
                hybrid_k=hybrid_k, fusion=_fusion_weight(cfg, tuned, rec.tuned_history_match(hybrid_k)), search=search,
                perturb=parse_perturb(cfg.perturb))


def _baselines(cfg: EvaluateConfig, cold: bool, data) -> list[str]:
    baselines = [b for b in cfg.baselines if not (cold and b in ("sasrec", "content"))]  # they read histories
    if data.cold_items and not cold and cfg.baselines and "content" not in baselines:
        baselines.append("content")  # the cold-item protocol: the baseline that can rank unseen items
    if "content" in baselines and data.manifest.get("columns", {}).get("title") is None:
        raise GenrecError("the content baseline reads item text, and this catalog has none (--baselines "
                          "popular,sasrec)")
    return baselines


def _fusion_weight(cfg: EvaluateConfig, tuned: dict, tuned_history: float) -> dict:
    """The fused row's weight: asked for, else the tuned one, else a fixed even mix (`infer/hybrid.py` owns both);
    its history match: asked for, else the tuned one (`Recommender.tuned_history_match`)."""
    weight, source = retriever_weight(cfg.retriever_weight, tuned, UNTUNED_FUSED_ROW_WEIGHT)
    history = cfg.history_match if cfg.history_match is not None else tuned_history
    return {"weight": weight, "history_match": history, "source": source}


def _choose_users(rec: Recommender, cfg: EvaluateConfig, plan: Plan, data, rows) -> Users:
    """Every user of the split (baselines are cheap and run on all of them); the LLM on a seeded sample."""
    all_targets, all_hist, all_seen = split_users(data, rows, cfg.split, cfg.exclude_seen and not plan.cold)
    chosen = select_rows(len(rows), cfg.max_users, cfg.seed)
    if plan.cold:
        chosen, requests = _cold_requests(rec.builders[plan.task].task, rows, chosen, cfg.seed)
    else:
        requests = history_queries(rows, chosen, all_seen)
    if plan.asks:
        chosen, requests = _asked(rec.builders[plan.task], rows, chosen, requests, cfg.seed)
    return Users(rows=rows, all_targets=all_targets, all_hist=all_hist, all_seen=all_seen, chosen=chosen,
                 requests=requests, targets=[all_targets[i] for i in chosen], seen=[all_seen[i] for i in chosen],
                 repeats=sum(1 for i in chosen if all_targets[i] in set(all_hist[i])) if not plan.cold else 0)


def _worded(rows, chosen: list[int], word) -> tuple[list[int], list[str]]:
    """The request `word(target)` gives each chosen user's target, and the users kept: those whose target has
    attributes to word one from (a request never names the title)."""
    kept, texts = [], []
    for i in chosen:
        text = word(rows[i]["target"])
        if text is not None:
            kept.append(i)
            texts.append(text)
    return kept, texts


def _cold_requests(task, rows, chosen: list[int], seed: int) -> tuple[list[int], list[Query]]:
    """Cold-start users: the request the task words for each chosen user's target, and the rows kept."""
    rng = random.Random(seed)
    kept, texts = _worded(rows, chosen, lambda item: task.request_for(item, rng))
    return kept, [Query(user_id=rows[i]["user_id"], text=t, context=json.loads(rows[i]["context"]))
                  for i, t in zip(kept, texts)]


def _asked(builder, rows, chosen: list[int], queries: list[Query], seed: int) -> tuple[list[int], list[Query]]:
    """History users who also say what they want: each query given the request training words for its target."""
    from genrec.prompts.tasks import request_for

    rng = random.Random(seed)
    kept, texts = _worded(rows, chosen, lambda item: request_for(builder, item, rng))
    if not kept:
        raise GenrecError("--task request: no test target has attributes to word a request from")
    by_row = dict(zip(chosen, queries))
    return kept, [dataclasses.replace(by_row[i], text=t) for i, t in zip(kept, texts)]


# ------------------------------------------------------------------------------------------------ ranking
def _rank(rec: Recommender, cfg: EvaluateConfig, plan: Plan, users: Users, data, counts: Counter, transfer: bool,
          log) -> Rankings:
    """genrec on the chosen users (timed), then the baselines on every user, the same noisy histories for genrec
    and SASRec when asked (--perturb, seen-item exclusion unchanged), and the baselines' lists cut to the chosen
    users."""
    t0 = time.time()
    lists = _genrec_lists(rec, cfg, plan, users.requests)
    out = Rankings(lists=lists, fused=[n for n in lists if n != "genrec"], genrec_seconds=time.time() - t0)
    if cfg.with_reasons:
        out.grounding = _reason_grounding(rec, cfg, plan, users.requests)
    if plan.asks:  # the same model and users without the request, and the request text alone (MiniLM)
        unasked = [dataclasses.replace(q, text=None) for q in users.requests]
        out.lists[NO_REQUEST] = _genrec_ranked(rec, unasked, cfg, plan.search, f"genrec {cfg.split}, no request")
        if plan.search.text_match and rec.reads_request_text:  # else the same as no request
            out.lists[READ_ONLY] = _genrec_ranked(rec, users.requests, cfg,
                                                  dataclasses.replace(plan.search, text_match=0.0),
                                                  f"genrec {cfg.split}, request read only")
        out.lists[REQUEST_TEXT] = request_text_rankings(rec.catalog, [q.text for q in users.requests],
                                                        users.seen, plan.kmax)
    if "popular" in plan.baselines:
        out.everyone["popular"] = popular_rankings(counts, users.all_seen, plan.kmax)
    if "content" in plan.baselines:
        out.everyone["content"] = content_rankings(rec.catalog, users.all_hist, users.all_seen, plan.kmax)
    histories = [users.all_hist]
    if plan.perturb:
        prng = random.Random(cfg.seed + 1)
        noisy_chosen = [perturb_history(users.all_hist[i], *plan.perturb, rec.index.item_ids, prng)
                        for i in users.chosen]
        histories.append(noisy_chosen)
        noisy = [Query(user_id=r.user_id, history=h, context=r.context, seen=r.seen)
                 for r, h in zip(users.requests, noisy_chosen)]
        out.lists["genrec~perturbed"] = _genrec_ranked(rec, noisy, cfg, dataclasses.replace(plan.search, candidates=0),
                                                       f"genrec {cfg.split} ({cfg.perturb})")
    if "sasrec" in plan.baselines:
        _add_sasrec(out, rec, cfg, plan, users, histories, data, transfer, log)
    for name, rk in out.everyone.items():
        out.lists[name] = [rk[i] for i in users.chosen]
    return out


def _genrec_lists(rec: Recommender, cfg: EvaluateConfig, plan: Plan,
                  requests: list[Query]) -> dict[str, list[list[str]]]:
    """genrec's top lists: a hybrid's from one scoring of the K (the LLM's order, and its fusion with the
    retriever's scores as "genrec x sasrec"), else the search's."""
    if plan.hybrid_k is None:
        return {"genrec": _genrec_ranked(rec, requests, cfg, plan.search, f"genrec {cfg.split}")}
    where = "rerank" if plan.rerank else f"within {plan.cand_k}"
    ranked, fused = _hybrid(rec, requests, cfg, plan.cand_k, plan.fusion, plan.kmax, f"genrec {where} {cfg.split}")
    return {"genrec": ranked, "genrec x sasrec": fused}


def _reason_grounding(rec: Recommender, cfg: EvaluateConfig, plan: Plan, requests: list[Query]) -> dict:
    """The top-1 item's reason per user, checked against the catalog and the history."""
    max_history = rec.builders[plan.task].cfg.max_history
    search = Search(k=1, beam_width=cfg.beam_width, exclude_seen=cfg.exclude_seen, with_reasons=True)
    cases = []
    for start in range(0, len(requests), cfg.batch_size):
        chunk = requests[start:start + cfg.batch_size]
        for req, res in zip(chunk, rec.recommend(chunk, search)):
            top = res.items[0]
            cases.append((top.reason, top.item_id, req.history[-max_history:]))
    return metrics.reason_grounding(cases, rec.catalog)


def _add_sasrec(out: Rankings, rec: Recommender, cfg: EvaluateConfig, plan: Plan, users: Users,
                histories: list[list[list[str]]], data, transfer: bool, log) -> None:
    """SASRec on every user (and on the chosen users' noisy histories); beside a hybrid also the ceiling of any
    reranker (the target among the retriever's K) and its chance level (the same K in a seeded random order)."""
    retriever, out.sasrec_facts = sasrec_retriever(rec, data, cfg, transfer, log)
    K, kmax = plan.hybrid_k, plan.kmax
    sas = sasrec_rankings(retriever, histories, [users.all_seen, users.seen], max(kmax, K or 0))
    if K is not None:
        out.recall = {"k": K, "users": sum(t in set(r[:K]) for r, t in zip(sas[0], users.all_targets))
                      / len(users.all_targets), "llm_users": sum(users.all_targets[i] in set(sas[0][i][:K])
                                                                 for i in users.chosen) / len(users.chosen)}
    out.everyone["sasrec"] = [r[:kmax] for r in sas[0]]
    if K is not None:
        srng = random.Random(cfg.seed + 2)
        out.lists[f"sasrec top-{K} shuffled"] = [
            (srng.sample(r[:K], len(r[:K])) + r[K:])[:kmax] for r in (sas[0][i] for i in users.chosen)]
    if plan.perturb:
        out.lists["sasrec~perturbed"] = [r[:kmax] for r in sas[1]]


def batched(rec: Recommender, requests: list[Query], cfg, desc: str, run) -> list:
    """`run(chunk)` (one result per request) over batches of similar prompt length (`length_batches`: little
    padding), with a progress bar; the results in request order."""
    from tqdm.auto import tqdm

    out: list = [None] * len(requests)
    bar = tqdm(total=len(requests), desc=desc, unit="user")
    for idx in length_batches(rec, requests, cfg.batch_size):
        for n, res in zip(idx, run([requests[n] for n in idx])):
            out[n] = res
        bar.update(len(idx))
    bar.close()
    return out


def _hybrid(rec: Recommender, requests: list[Query], cfg, K: int | None, fusion: dict, kmax: int,
            desc: str) -> tuple[list[list[str]], list[list[str]]]:
    """A hybrid's two lists per user from one scoring of the retriever's K (`candidate_scores`): the LLM's order
    alone (with the history match asked for) and its fusion with the retriever (`fusion`'s weight w and history
    match h), each followed by the retriever's order."""
    def run(chunk):
        return [(hybrid_order(c, 0.0, kmax, cfg.history_match or 0.0),
                 hybrid_order(c, fusion["weight"], kmax, fusion["history_match"]))
                for c in candidate_scores(rec, chunk, kmax, cfg.exclude_seen, K, cfg.popularity_penalty)]

    pairs = batched(rec, requests, cfg, desc, run)
    return [a for a, _ in pairs], [f for _, f in pairs]


def _genrec_ranked(rec: Recommender, requests: list[Query], cfg: EvaluateConfig, search: Search,
                   desc: str) -> list[list[str]]:
    return batched(rec, requests, cfg, desc, lambda chunk: [res.item_ids for res in rec.recommend(chunk, search)])


# ------------------------------------------------------------------------------------------------ measuring
def _measure(rec: Recommender, cfg: EvaluateConfig, plan: Plan, users: Users, ranked: Rankings, counts: Counter,
             data, transfer: bool) -> dict:
    """The report: every list measured on the same users, with intervals, paired differences, slices by user group,
    the baselines on every user and what the runs reported (the perturbed runs as drops, not as models)."""
    catalog = set(rec.index.item_ids)
    full, per_user_values, target_pct = _metrics(rec, cfg, users.targets, ranked.lists, counts, catalog)
    results = {n: m for n, m in full.items() if "~" not in n}
    draws = metrics.bootstrap_draws(len(users.targets), seed=cfg.seed)
    intervals = {n: metrics.summary(per_user_values[n], draws) for n in results}
    k_main = 10 if 10 in cfg.ks else plan.kmax
    paired = _paired_differences(results, per_user_values, ranked.fused, draws)
    slices = user_slices([len(users.all_hist[i]) for i in users.chosen], users.targets, counts, per_user_values,
                         results, k_main, cfg.seed, data.cold_items,
                         [tuple(pair.split(" - ")) for pair in paired]) if not plan.cold else {}
    n, seconds = len(users.chosen), ranked.genrec_seconds
    return {
        "split": cfg.split, "main_k": k_main, "users_evaluated": n, "users_in_split": len(users.rows),
        "fraction_evaluated": n / len(users.rows), "catalog_items": len(catalog),
        "users_target_in_history": users.repeats,
        "genrec_seconds": round(seconds, 2), "genrec_users_per_second": round(n / seconds, 3),
        "results": results, "intervals": intervals, "paired_differences": paired, "slices": slices,
        "baselines_all_users": _all_users(cfg, users, ranked.everyone, catalog), "sasrec": ranked.sasrec_facts,
        "retriever_recall": ranked.recall,
        "hybrid": None if plan.hybrid_k is None else ("rerank" if plan.rerank else "generation within candidates"),
        # genrec's row: asked for, else (the whole catalog) the tuned one; a hybrid's fused row: "fusion"
        "history_match": (cfg.history_match or 0.0) if plan.hybrid_k is not None else
        cfg.history_match if cfg.history_match is not None else rec.tuned_history_match(None),
        "fusion": None if plan.hybrid_k is None else {**plan.fusion, "candidates": plan.hybrid_k},
        "targets_pop_pct": target_pct, "perturbation": _perturbation(cfg, plan, full),
        "reason_grounding": ranked.grounding, "task": plan.task, "data": str(data.path), "catalog_transfer": transfer,
        "settings": to_dict(cfg),
        "markdown": markdown_table(results, cfg.ks),
        "intervals_markdown": intervals_markdown(intervals, paired, k_main, n),
        "verdict": verdict(paired, k_main, n),
    }


def _metrics(rec: Recommender, cfg: EvaluateConfig, targets: list[str], lists: dict[str, list[list[str]]],
             counts: Counter, catalog: set[str]) -> tuple[dict, dict, float]:
    """Each list's metrics (ranking and beyond accuracy), its per-user values (for intervals and paired
    differences), and the targets' mean popularity percentile."""
    full, per_user_values = {}, {}
    for name, rk in lists.items():
        full[name] = metrics.rank_metrics(rk, targets, cfg.ks, catalog)
        extra, target_pct = metrics.beyond_accuracy(rk, targets, counts, rec.catalog)
        full[name].update(extra)
        per_user_values[name] = metrics.per_user(metrics.target_ranks(rk, targets), cfg.ks)
    return full, per_user_values, target_pct


def _paired_differences(results: dict, per_user_values: dict, fused: list[str], draws) -> dict:
    """genrec minus each other model on the same users, and each fused row minus SASRec alone (does the LLM add
    anything to its retriever?)."""
    paired = {f"genrec - {n}": metrics.paired_difference(per_user_values["genrec"], per_user_values[n], draws)
              for n in results if n != "genrec"}
    for n in fused:
        if "sasrec" in results:
            paired[f"{n} - sasrec"] = metrics.paired_difference(per_user_values[n], per_user_values["sasrec"], draws)
    return paired


def _all_users(cfg: EvaluateConfig, users: Users, everyone: dict[str, list[list[str]]], catalog: set[str]) -> dict:
    """The baselines' metrics and intervals on every user of the split."""
    all_users = {}
    if everyone:
        all_draws = metrics.bootstrap_draws(len(users.rows), seed=cfg.seed)
        for name, rk in everyone.items():
            all_users[name] = {"metrics": metrics.rank_metrics(rk, users.all_targets, cfg.ks, catalog),
                               "intervals": metrics.summary(
                                   metrics.per_user(metrics.target_ranks(rk, users.all_targets), cfg.ks), all_draws)}
    return all_users


def _perturbation(cfg: EvaluateConfig, plan: Plan, full: dict) -> dict | None:
    """Each model's metrics on clean and on noisy histories, and the drop."""
    if not plan.perturb:
        return None
    ms = ("HR@" + str(plan.kmax), "NDCG@" + str(plan.kmax), "MRR")
    return {"spec": cfg.perturb, "models": {
        n: {m: {"clean": full[n][m], "perturbed": full[f"{n}~perturbed"][m],
                "drop": full[n][m] - full[f"{n}~perturbed"][m]} for m in ms}
        for n in ("genrec", "sasrec") if f"{n}~perturbed" in full}}


# ------------------------------------------------------------------------------------------------ other protocols
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
    md = scores_markdown(results, cols)
    report = {"task": task, "split": cfg.split, "users_evaluated": len(chosen), "users_in_split": len(rows),
              "negatives_per_positive": cfg.negatives if rule.samples_negatives else None, "results": results,
              "settings": to_dict(cfg), "markdown": md}
    return write_report(cfg, report, f"{task.capitalize()}, split `{cfg.split}`: {len(chosen)} users, {what}.\n\n{md}",
                        "scores.jsonl", [{"user_id": r.user_id, "candidates": c, "labels": y, "scores": p}
                                         for r, c, y, p in zip(requests, cands, truth, scores)], log)


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
        retriever, facts = sasrec_retriever(None, data, cfg, False, log)
        (lists["sasrec"],) = sasrec_rankings(retriever, [hist], [seen], kmax)
    draws = metrics.bootstrap_draws(len(rows), seed=cfg.seed)
    per = {n: metrics.per_user(metrics.target_ranks(rk, targets), cfg.ks) for n, rk in lists.items()}
    return {"split": cfg.split, "users": len(rows), "catalog_items": len(catalog),
            "results": {n: metrics.rank_metrics(rk, targets, cfg.ks, catalog) for n, rk in lists.items()},
            "intervals": {n: metrics.summary(v, draws) for n, v in per.items()},
            "paired_differences": {"sasrec - popular": metrics.paired_difference(per["sasrec"], per["popular"], draws)}
            if {"sasrec", "popular"} <= set(per) else {}, "sasrec": facts}
