"""A generative model's answers: the constrained search over one prompt builder's requests (the whole catalog, or
the hybrid's K candidates, fused with the retriever), the reasons it writes after each chosen item (or, for an
item-token model trained without them, `explain.py`'s), and the tokens it used. `Recommender.recommend` routes
each request here or to the rerank model (`hybrid.py`)."""

from __future__ import annotations

import torch

from genrec.infer import explain, hybrid
from genrec.infer.answer import Recommendation, Usage
from genrec.infer.constrained import top_items
from genrec.infer.query import Query, Search
from genrec.prompts.builder import PromptBuilder


def search(rec, builder: PromptBuilder, batch: list[Query], s: Search, candidates: int | None, weight: float,
           pools: list[list[tuple[str, float]]] | None, with_usage: bool) -> list[Recommendation]:
    """The constrained search of one prompt builder's requests: over the whole catalog, or (`pools`) within each
    request's K retrieved candidates, fused with the retriever's scores when `weight` != 0 (then every one of
    the K is scored and reordered), the retriever's order going on after them."""
    prompts = [rec.prompt(builder, r, s) for r in batch]
    banned = [{rec.index.position[i] for i in r.excluded(s.exclude_seen) if i in rec.index.position}
              for r in batch]
    if pools is not None:  # a trie of the retriever's K candidates only: ban every other item
        everything = set(range(len(rec.index.item_ids)))
        banned = [everything - {rec.index.position[i] for i, _ in pool[:candidates]} for pool in pools]
    fusing = pools is not None and weight != 0
    n_found = candidates if fusing else min(s.k, candidates or s.k)
    found, uncertified = searched(rec, builder, batch, prompts, banned, n_found, s)
    if fusing:
        found = [hybrid.fused(rec, hyps, dict(pool[:candidates]), weight)[:s.k] for hyps, pool in zip(found, pools)]
    wrote = s.with_reasons and builder.with_reasons  # the engine writes them; an item-token model's are explained
    reasons = write_reasons(rec, builder, prompts, found) if wrote else \
        explain.explained(rec, batch, found) if s.with_reasons and rec.explains else None
    out = []
    for j, hyps in enumerate(found):
        picks = [rec.pick(rec.index.item_ids[h.item], rank, round(h.score, 5),
                           reasons[j][rank - 1] if reasons is not None else None)
                 for rank, h in enumerate(hyps, start=1)]
        if pools is not None:  # after the K candidates: the retriever's order
            chosen = {p.item_id for p in picks}
            tail = [i for i, _ in pools[j] if i not in chosen][:s.k - len(picks)]
            picks += [rec.pick(i, len(picks) + r, None) for r, i in enumerate(tail, start=1)]
        answer = Recommendation(picks, exact=(j not in uncertified) if s.search == "exact" else None)
        if with_usage:
            per_item = [len(builder.item_tokens(rec.index.targets[h.item])) +
                        (len(builder.plain(reasons[j][r])) + 1 if wrote else 0)
                        for r, h in enumerate(hyps)]
            answer.usage = Usage(len(prompts[j]), sum(per_item), per_item)
        out.append(answer)
    return out


def searched(rec, builder: PromptBuilder, batch: list[Query], prompts: list[list[int]], banned: list[set[int]],
             k: int, s: Search) -> tuple[list, set[int]]:
    """The top k hypotheses per prompt, and the prompts whose exact top k is not certified. The popularity
    penalty is every prompt's; a request whose words are matched (`Recommender.matches_text`) adds its own
    per-item penalty (`Catalog.text_penalty`), a history whose item texts are matched (`matches_history`) its own
    (`Catalog.history_penalty`), and the batch is still searched together."""
    penalty = rec.catalog.penalty(s.popularity_penalty)
    worded = [j for j, r in enumerate(batch) if r.text] if rec.matches_text(s) else []
    read = [j for j, r in enumerate(batch) if r.history] if rec.matches_history(s) else []
    if worded or read:  # one row per prompt: the others keep the shared row (or none)
        rows = torch.zeros(len(batch), len(rec.index.item_ids), dtype=torch.float64)
        if penalty is not None:
            rows[:] = torch.tensor(penalty, dtype=torch.float64)
        if worded:
            rows[worded] += rec.catalog.text_penalty([batch[j].text for j in worded], s.text_match)
        if read:
            rows[read] += rec.catalog.history_penalty([batch[j].history for j in read], s.history_match)
        penalty = rows
    stats: dict = {}
    found = top_items(rec.backend, prompts, rec.catalog.trie(builder), k, max(s.width, k), banned, penalty,
                      search=s.search, stats=stats, max_width=s.max_width)
    return found, set(stats["uncertified"])


def write_reasons(rec, builder: PromptBuilder, prompts: list[list[int]], found) -> list[list[str]]:
    """Greedy free-text reasons after each chosen item; the item itself is already fixed."""
    seqs, owners = [], []
    for j, hyps in enumerate(found):
        for h in hyps:
            seqs.append(prompts[j] + builder.item_tokens(rec.index.targets[h.item]))
            owners.append(j)
    outs = rec.backend.greedy(seqs, builder.cfg.max_reason_tokens) if seqs else []
    per_user: list[list[str]] = [[] for _ in found]
    for j, ids in zip(owners, outs):
        per_user[j].append(" ".join(rec.tok.decode(ids, skip_special_tokens=True).split()))
    return per_user
