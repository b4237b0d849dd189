"""The baselines `genrec evaluate` ranks beside genrec on the same split and users: most-popular, SASRec (trained
here as `infer/sasrec.py` defines it, the model the hybrid retrieves with) and a content baseline."""

from __future__ import annotations

from collections import Counter

import torch

from genrec.config import EvaluateConfig
from genrec.infer.catalog import Catalog, history_vectors
from genrec.infer.recommender import Recommender
from genrec.infer.retriever import Retriever


BASELINES = ("popular", "sasrec", "content")  # `genrec evaluate --baselines` (content: added for cold items)


def content_rankings(catalog: Catalog | dict[str, dict], histories: list[list[str]], seen: list[set[str]],
                     k: int) -> list[list[str]]:
    """Content baseline, no training: each item's text (title and facts) embedded by MiniLM (the encoder of
    semantic ids), a user as the mean of their history's item vectors, items ranked by cosine. Why: it is what a
    catalog's text alone knows, the floor a model that reads item text should clear on items it never saw in
    training (SASRec and most-popular cannot rank those at all)."""
    ids, emb = item_vectors(catalog)
    return nearest_items(history_vectors(ids, emb, histories), emb, ids, seen, k)


def item_vectors(catalog: Catalog | dict[str, dict]) -> tuple[list[str], torch.Tensor]:
    """(item ids, their MiniLM text rows in that order). A model's Catalog reads them once and keeps them (its
    search matches requests against the same rows); a plain catalog is read here."""
    if isinstance(catalog, Catalog):
        return catalog.index.item_ids, catalog.text_embeddings()
    from genrec.items.text import catalog_embeddings, item_text

    ids = list(catalog)
    return ids, torch.from_numpy(catalog_embeddings([item_text(catalog[i]) for i in ids]))


def nearest_items(queries: torch.Tensor, emb: torch.Tensor, ids: list[str], seen: list[set[str]],
                  k: int) -> list[list[str]]:
    """Per query vector, the k items of highest dot product with it (`emb` rows, in `ids` order), seen left out."""
    pos = {i: n for n, i in enumerate(ids)}
    out = []
    for start in range(0, len(queries), 1024):
        scores = queries[start:start + 1024] @ emb.t()
        for r, s in enumerate(seen[start:start + 1024]):
            excluded = [pos[i] for i in s if i in pos]
            if excluded:
                scores[r, excluded] = float("-inf")
        out += [[ids[j] for j in row] for row in scores.topk(min(k, len(ids)), dim=1).indices.tolist()]
    return out


NO_REQUEST = "genrec, no request"  # evaluate --task request: the same model and users without the request
REQUEST_TEXT = "request text (MiniLM)"  # ... and the request alone, by text retrieval
READ_ONLY = "genrec, request read only"  # ... and (under --text-match) the model's own reading of the request


def request_text_rankings(catalog: Catalog | dict[str, dict], requests: list[str], seen: list[set[str]],
                          k: int) -> list[list[str]]:
    """Text retrieval on a request alone: MiniLM's cosine between the request and each item's text (title and
    facts), seen items excluded. Why: what the words of a request find without any history or training, the
    floor a model that reads both must clear."""
    from genrec.items.text import text_embeddings

    ids, emb = item_vectors(catalog)
    return nearest_items(torch.from_numpy(text_embeddings(requests)), emb, ids, seen, k)


def popular_rankings(train_counts: Counter, seen: list[set[str]], k: int) -> list[list[str]]:
    order = [i for i, _ in train_counts.most_common()]
    out = []
    for s in seen:
        ranked = []
        for i in order:
            if i not in s:
                ranked.append(i)
                if len(ranked) == k:
                    break
        out.append(ranked)
    return out




def sasrec_retriever(rec: Recommender | None, data, cfg: EvaluateConfig, transfer: bool,
                     log) -> tuple[Retriever, dict]:
    """The SASRec row: the model's own retriever when it has one (a hybrid is compared with exactly the retriever it
    reranks), else SASRec trained on the training part of every sequence, early-stopped on validation (now, or by an
    earlier evaluation of the same data: `Retriever.cached`)."""
    if rec is not None and rec.retriever is not None and not transfer:
        return rec.retriever, {**rec.retriever.facts, "source": "the model's retriever"}
    r, cached = Retriever.cached(data, seed=cfg.seed, max_seconds=cfg.sasrec_seconds, dropout=cfg.sasrec_dropout,
                                 log=log)
    return r, {**r.facts, "source": "trained for an earlier evaluation of this data (sasrec-cache)" if cached else
               "trained for this evaluation"}


def sasrec_rankings(retriever: Retriever, histories: list[list[list[str]]], seen: list[list[set[str]]],
                    kmax: int) -> list[list[list[str]]]:
    """The retriever's top kmax for each history variant (excluding the matching `seen` sets)."""
    return [[[i for i, _ in row] for row in retriever.top(h, s, kmax)] for h, s in zip(histories, seen)]
