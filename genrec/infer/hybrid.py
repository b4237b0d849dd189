"""The hybrid: a collaborative retriever (SASRec, `retriever.py`) proposes K candidates and the LLM orders them,
either a rerank model scoring their labels in one forward pass (`rerank`, `label_scores`) or a generative model
searching within them; `fuse` is the one rule that mixes the two scores, and `candidate_scores` keeps both raw so
that any weight can be applied afterwards (`genrec evaluate`, `genrec tune-fusion`).

Every function takes the loaded Recommender (`rec`) it works for; the Recommender routes requests here."""

from __future__ import annotations

import dataclasses

from genrec.errors import GenrecError
from genrec.infer.answer import Pick, Recommendation, Usage

# The retriever weight when none is asked for and none was tuned (`genrec tune-fusion`): a search within the
# retriever's candidates keeps the LLM's order (0); `genrec evaluate`'s fused row mixes the two evenly (1), a weight
# fixed before any test user is seen, so the row is a fair hybrid rather than the LLM alone again.
UNTUNED_WEIGHT = 0.0
UNTUNED_FUSED_ROW_WEIGHT = 1.0


def retriever_weight(asked: float | None, tuned: dict | None, untuned: float = UNTUNED_WEIGHT) -> tuple[float, str]:
    """The weight a hybrid runs with and where it came from: asked for, else the model's tuned one, else `untuned`."""
    if asked is not None:
        return float(asked), "--retriever-weight"
    if tuned:
        return float(tuned["weight"]), f"tuned on {tuned.get('users')} validation users"
    return untuned, "fixed in advance"


def fuse(llm: list[float], retriever: list[float], weight: float, content: list[float] | None = None,
         history: float = 0.0) -> list[tuple[int, float]]:
    """The hybrid's order of K candidates: log p_LLM + weight * log softmax(retriever scores over the K)
    [- history * content, content being each candidate's `Catalog.history_penalty` at weight 1: the history
    match an item-token search adds to log p], best first, ties in input order (the reranker gets them in the
    retriever's order). One rule for the reranker's label scores and for generation within candidates (sequence
    log-probabilities); weight 0 is the LLM alone."""
    import torch

    fused = torch.tensor(llm, dtype=torch.float64)
    if weight:
        fused = fused + weight * torch.log_softmax(torch.tensor(retriever, dtype=torch.float64), -1)
    if history and content is not None:
        fused = fused - history * torch.tensor(content, dtype=torch.float64)
    return sorted(((c, float(f)) for c, f in enumerate(fused)), key=lambda cf: (-cf[1], cf[0]))


def hybrid_order(scored: dict, weight: float, n: int, history: float = 0.0) -> list[str]:
    """The first n items of a hybrid's list from `candidate_scores` output: the K fused with weight w and history
    match h (`fuse`; w = h = 0: the LLM's order alone), then the retriever's order."""
    order = fuse(scored["llm"], scored["retriever"], weight, scored.get("content"), history)
    return ([scored["items"][c] for c, _ in order] + scored["rest"])[:n]


def narrowed(scored: dict, k: int) -> dict:
    """`candidate_scores` output of a generative model for K as if it had been asked for its retriever's first k
    (k <= K): exact, since each candidate's sequence log-probability is over the whole vocabulary and so does not
    depend on which other items are candidates (a rerank model's label softmax does: never narrow one)."""
    out = {"items": scored["items"][:k], "llm": scored["llm"][:k], "retriever": scored["retriever"][:k],
           "rest": scored["items"][k:] + scored["rest"]}
    if scored.get("content") is not None:
        out["content"] = scored["content"][:k]
    return out


def fused(rec, hyps: list, retrieved: dict[str, float], weight: float) -> list:
    """A hybrid's K hypotheses reordered by log p_LLM + weight x log softmax(the retriever's scores)."""
    order = fuse([h.score for h in hyps], [retrieved[rec.index.item_ids[h.item]] for h in hyps], weight)
    return [dataclasses.replace(hyps[c], score=score) for c, score in order]


def candidate_scores(rec, requests: list, n: int, exclude_seen: bool = True,
                     candidates: int | None = None, popularity_penalty: float = 0.0) -> list[dict]:
    """A hybrid's raw scores, so any retriever weight can be applied afterwards (evaluation, `tune-fusion`):
    per request {"items": the retriever's top K, in its order; "llm": the LLM's log-score of each (a rerank
    model's label log-softmax, else the sequence log-probability from one exact search within the K);
    "retriever": the retriever's score of each; "rest": its next items up to n in all; and, for a model that
    can match histories to item texts (`Recommender.can_match_history`), "content": each candidate's
    `Catalog.history_penalty` at weight 1, so a history-match weight too can be applied afterwards}. K is a rerank model's own,
    else `candidates`; a search ranks by the penalised log-probability, as `recommend` does (no history match:
    that is "content")."""
    if rec.reranks:
        K = rec.rerank_prompts.cfg.rerank_candidates
        pools = rec.retrieved(requests, max(n, K), exclude_seen)
        llm = label_scores(rec, requests, [[i for i, _ in p[:K]] for p in pools])
    else:
        if not candidates:
            raise GenrecError("candidate scores need the retriever's K (--candidates retriever:K)")
        K = candidates
        pools = rec.retrieved(requests, max(n, K), exclude_seen)
        found = rec.recommend(requests, retrieved=pools, k=K, candidates=K, retriever_weight=0.0, history_match=0.0,
                               search="exact", exclude_seen=exclude_seen, popularity_penalty=popularity_penalty)
        llm = []
        for res, pool in zip(found, pools):
            score = {p.item_id: p.score for p in res.items if p.score is not None}
            llm.append([score[i] for i, _ in pool[:K]])
    out = [{"items": [i for i, _ in p[:K]], "llm": list(s), "retriever": [r for _, r in p[:K]],
            "rest": [i for i, _ in p[K:max(n, K)]]} for p, s in zip(pools, llm)]
    if rec.can_match_history and not rec.reranks:
        penalty = rec.catalog.history_penalty([r.history for r in requests], 1.0)
        for j, c in enumerate(out):
            c["content"] = penalty[j, [rec.index.position[i] for i in c["items"]]].tolist()
    return out


def label_scores(rec, requests: list, candidates: list[list[str]],
                 prompt_tokens: list[int] | None = None) -> list[list[float]]:
    """Rerank model: per request, the log-softmax over its candidates' label tokens (A, B, ...) at the answer
    position, from one forward pass over history + candidates (a verbalizer; never sampled text).
    `prompt_tokens`, when given, gets each request's prompt length (0 without candidates)."""
    import torch

    builder = rec.rerank_prompts
    if builder is None:
        raise GenrecError(f"{rec.dir} was not trained for the rerank task (train with --task rerank)")
    rows = [j for j, c in enumerate(candidates) if c]
    prompts = [builder.encode(requests[j].history, requests[j].history_ts, requests[j].context,
                              history_ratings=requests[j].ratings, candidates=candidates[j]) for j in rows]
    out: list[list[float]] = [[] for _ in requests]
    if rows:
        logp = rec.backend.start(prompts, [builder.task.label_ids(len(candidates[j])) for j in rows]).logp.float()
        for r, j in enumerate(rows):
            out[j] = torch.log_softmax(logp[r, :len(candidates[j])], -1).tolist()
    if prompt_tokens is not None:
        lengths = dict(zip(rows, map(len, prompts)))
        prompt_tokens[:] = [lengths.get(j, 0) for j in range(len(requests))]
    return out


def rerank(rec, requests: list, k: int, exclude_seen: bool = True,
           weights: tuple[float, ...] = (0.0,)) -> list[list[Recommendation]]:
    """Rerank model: the retriever proposes its top K, the LLM scores them (`label_scores`). One result list
    per weight w: the K ranked by log p_LLM + w * log softmax(retriever scores over the K) (w = 0: the LLM
    alone), then the retriever's order up to k. Usage: the prompt is all the engine read (one forward pass,
    nothing generated)."""
    if rec.rerank_prompts is None:
        raise GenrecError(f"{rec.dir} was not trained for the rerank task (train with --task rerank)")
    K = rec.rerank_prompts.cfg.rerank_candidates
    pools = rec.retrieved(requests, max(k, K), exclude_seen)
    heads = [p[:K] for p in pools]
    tokens: list[int] = []
    llm = label_scores(rec, requests, [[i for i, _ in h] for h in heads], tokens)
    out: list[list[Recommendation]] = [[] for _ in weights]
    for w_n, w in enumerate(weights):
        for j, (pool, head) in enumerate(zip(pools, heads)):
            picks: list[Pick] = []
            if head:
                order = fuse(llm[j], [s for _, s in head], w)
                picks = [rec.pick(head[c][0], n, round(score, 5)) for n, (c, score) in enumerate(order[:k], 1)]
                picks += [rec.pick(i, len(picks) + n, None) for n, (i, _) in enumerate(pool[K:k], start=1)]
            out[w_n].append(Recommendation(picks, Usage(tokens[j], 0, [0] * len(picks))))
    return out
