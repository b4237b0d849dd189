"""`genrec tune-fusion`: a hybrid's retriever weight (and K, and an item-token model's history match) chosen on
validation users, written to `<model>/fusion.json`, which generate, evaluate and serve then use by default."""

from __future__ import annotations

import sys
from pathlib import Path

from genrec import metrics
from genrec.config import FusionConfig
from genrec.data.prepared import load_prepared
from genrec.errors import GenrecError
from genrec.eval.protocol import batched, history_queries, select_rows, split_users
from genrec.files import write_json
from genrec.infer.recommender import Recommender
from genrec.infer.hybrid import candidate_scores, hybrid_order, narrowed
from genrec.infer.retriever import parse_candidate_sizes
from genrec.model_dir import ModelCard


def tune_fusion(cfg: FusionConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Choose a hybrid's retriever weight w (and, for a generative model given several, its K; for an item-token
    model its history match h) on validation users, never test ones: each user's candidates are scored once at the
    largest K (`candidate_scores`; a smaller K is the same scores cut to the retriever's first K, `narrowed`),
    every (K, w, h) ranks them (`hybrid_order`), and the best NDCG@10 (ties: the smaller w, h, then K) is written
    with its table to `<model>/fusion.json`, which generate, evaluate and serve then use by default. Why tune: the
    LLM's and the retriever's log-scores are on different scales, and w = 1 fixed in advance left the fusion below
    SASRec alone on Scientific (-0.0032 NDCG@10, paired); why K too: a larger K lets the LLM bring up items the
    retriever ranked lower; why h: what the items' texts say about the history is a third view, strongest on the
    tail where the other two saw least."""
    for flag, values in (("--weights", cfg.weights), ("--history-weights", cfg.history_weights)):
        if not values or any(not 0 <= w < float("inf") for w in values):
            raise GenrecError(f"{flag} must be non-negative numbers, got {values}")
    asked = parse_candidate_sizes(cfg.candidates) if cfg.candidates else None
    rec = Recommender(cfg.model, cfg.dtype, cfg.backend, cfg.vllm)
    if rec.retriever is None and rec.can_match_history:
        return _tune_history_match(rec, cfg, log)
    if rec.retriever is None:
        raise GenrecError(f"{cfg.model} has no retriever to fuse with (train it with `genrec sft retriever=sasrec`)")
    rerank = rec.reranks
    if not rerank and not asked:
        raise GenrecError(f"a generative model's hybrid needs --candidates retriever:K, got {cfg.candidates!r}")
    sizes = [None] if rerank else asked
    rec.recommend([], k=1, candidates=sizes[-1])  # its checks of these settings (K within the catalog), before work
    scored, targets = _validation_scores(rec, cfg, sizes[-1])
    if rerank:
        log("note: a rerank model learnt these validation items, so the weight chosen on them leans toward the LLM")
    histories = sorted(set(cfg.history_weights)) if all("content" in c for c in scored) else [0.0]
    table = _fusion_table(scored, targets, sizes, cfg.weights, histories)
    best = max(table, key=lambda row: (row["NDCG@10"], -row["weight"], -row["history_match"],
                                       -(row["candidates"] or 0)))
    tuned = {"candidates": best["candidates"], "weight": best["weight"], "history_match": best["history_match"],
             "chosen_by": "NDCG@10", "split": "valid", "users": len(targets), "seed": cfg.seed, "table": table,
             "retriever_alone": _measure([(c["items"] + c["rest"])[:10] for c in scored], targets)}
    write_json(Path(cfg.model) / ModelCard.FUSION, tuned)
    for row in table:
        log(("" if rerank else f"K = {row['candidates']}, ") + f"w = {row['weight']:g}" +
            (f", h = {row['history_match']:g}" if len(histories) > 1 else "") +
            f": NDCG@10 {row['NDCG@10']:.4f}  HR@10 {row['HR@10']:.4f}" + ("  <- chosen" if row is best else ""))
    log(f"retriever alone: NDCG@10 {tuned['retriever_alone']['NDCG@10']:.4f}; wrote {cfg.model}/{ModelCard.FUSION}")
    return tuned


def _tune_history_match(rec: Recommender, cfg: FusionConfig, log) -> dict:
    """An item-token model without a retriever: its history match h alone (`--history-match`), chosen on validation
    users by searching the whole catalog at each h of `--history-weights`, and kept in fusion.json as a choice for
    the whole catalog (candidates none, w 0). Why: how much the items' texts add depends on the data (on Amazon
    Scientific h = 30 was +0.0127 NDCG@10 on the test users; on ml-latest-small, whose texts say little, ~0)."""
    requests, targets = _validation_requests(rec, cfg)
    table = []
    for h in sorted(set(cfg.history_weights)):
        lists = batched(rec, requests, cfg, f"history match {h:g} (valid)",
                        lambda chunk: [r.item_ids for r in rec.recommend(chunk, k=10, history_match=h)])
        table.append({"candidates": None, "weight": 0.0, "history_match": h, **_measure(lists, targets)})
    best = max(table, key=lambda row: (row["NDCG@10"], -row["history_match"]))
    tuned = {"candidates": None, "weight": 0.0, "history_match": best["history_match"], "chosen_by": "NDCG@10",
             "split": "valid", "users": len(targets), "seed": cfg.seed, "table": table}
    write_json(Path(cfg.model) / ModelCard.FUSION, tuned)
    for row in table:
        log(f"h = {row['history_match']:g}: NDCG@10 {row['NDCG@10']:.4f}  HR@10 {row['HR@10']:.4f}"
            + ("  <- chosen" if row is best else ""))
    log(f"no retriever: the history match alone, over the whole catalog; wrote {cfg.model}/{ModelCard.FUSION}")
    return tuned


def _validation_requests(rec: Recommender, cfg: FusionConfig) -> tuple[list, list[str]]:
    """A seeded sample of validation users as requests (history, seen items), and their targets."""
    data = load_prepared(rec.card.data)
    if rec.use_data(data):
        raise GenrecError(f"{cfg.model}'s training data no longer matches its catalog")
    rows = data.split("valid")
    targets, _, seen = split_users(data, rows, "valid", True)
    chosen = select_rows(len(rows), cfg.max_users, cfg.seed)
    if not chosen:
        raise GenrecError(f"{data.path} has no validation users to tune on")
    return history_queries(rows, chosen, seen), [targets[i] for i in chosen]


def _validation_scores(rec: Recommender, cfg: FusionConfig, K: int | None) -> tuple[list[dict], list[str]]:
    """The raw hybrid scores (`candidate_scores` at K) of a seeded sample of validation users, and their targets."""
    requests, targets = _validation_requests(rec, cfg)
    scored = batched(rec, requests, cfg, "scoring candidates (valid)",
                     lambda chunk: candidate_scores(rec, chunk, 10, True, K))
    return scored, targets


def _fusion_table(scored: list[dict], targets: list[str], sizes: list[int | None], weights: list[float],
                  histories: list[float]) -> list[dict]:
    """NDCG@10 and HR@10 of every (K, w, h): the scores at the largest K, cut to each smaller K."""
    table = []
    for K in sizes:
        at_k = scored if K is None or K == sizes[-1] else [narrowed(c, K) for c in scored]
        table += [{"candidates": K, "weight": w, "history_match": h,
                   **_measure([hybrid_order(c, w, 10, h) for c in at_k], targets)}
                  for w in sorted(set(weights)) for h in histories]
    return table


def _measure(lists: list[list[str]], targets: list[str]) -> dict:
    v = metrics.per_user(metrics.target_ranks(lists, targets), [10])
    return {"NDCG@10": round(float(v["NDCG@10"].mean()), 5), "HR@10": round(float(v["HR@10"].mean()), 5)}
