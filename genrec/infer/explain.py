"""Reasons for an item-token model trained without them: each recommended item is explained by the history item
the model itself places nearest to it, and by the attribute values the two share, rendered by the template's
`reason` block ("Because of Toy Story 2 (1999) in your history: both Adventure, Animation, Children.").

Why not free text: a next-item model trained without reason lines writes none, and one trained with them
(`prompt.reason_share`) costs ranking and, at CPU budgets, names no title of the history (docs/results.md). Here
the reason costs no training and no engine pass, every title and value it states is a catalog fact, and it is the
model's own: an item token's row is one vector for both reading and writing that item (tied embeddings), and items
the model predicts in the same contexts get nearby rows, so the history item whose row has the largest cosine with
the recommended item's (both less the mean item row) is the one that history most supports it by. A request with
no history names no item; its reason gives the item's first attribute."""

from __future__ import annotations

import weakref

import numpy as np
import torch

from genrec.infer.query import Query
from genrec.prompts.builder import PromptBuilder


def anchors(picks: np.ndarray, history: np.ndarray, itself: np.ndarray) -> list[int | None]:
    """Per pick row, the index of the history row with the largest cosine (ties: the newest, the last row), never
    the pick itself (`itself[p, j]`: history item j is pick p, seen items being allowed back); None when the
    history holds nothing else. NumPy: these are a few rows a request, where torch's per-op cost dominates."""
    p = picks / np.maximum(np.linalg.norm(picks, axis=1, keepdims=True), 1e-12)
    h = history / np.maximum(np.linalg.norm(history, axis=1, keepdims=True), 1e-12)
    sims = np.where(itself, -np.inf, p @ h.T)[:, ::-1]  # reversed: argmax finds the newest maximum
    best = history.shape[0] - 1 - sims.argmax(-1)
    return [None if itself[r].all() else int(j) for r, j in enumerate(best)]


_MEANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backend -> its mean item row


def token_id(builder: PromptBuilder, rec, item: str) -> int:
    """An item's one token (item_id=token), whichever builder asks."""
    return builder.item_tokens(rec.index.targets[rec.index.position[item]])[0]


def mean_row(rec, builder: PromptBuilder) -> torch.Tensor:
    """The mean of every item token's row, read once per engine. Rows are compared after it is subtracted: what
    all items' rows share (the grounded rows' common bias, the general direction of new tokens) says nothing of
    which history item is nearest one of them."""
    if rec.backend not in _MEANS:
        ids = [token_id(builder, rec, i) for i in rec.index.item_ids]
        _MEANS[rec.backend] = rec.backend.output_rows(ids).mean(0)
    return _MEANS[rec.backend]


def explained(rec, batch: list[Query], found) -> list[list[str]]:
    """The reason for each hypothesis of each request (`found`: its hypotheses, in order), rendered by the history
    prompts' `reason` block (`Recommender.explains`) from the model's nearest history item among the newest
    `max_history` (those a prompt may show) and the request; whichever builder searched the request."""
    builder = rec.history_prompts
    token = {}
    for req, hyps in zip(batch, found):
        for i in [rec.index.item_ids[h.item] for h in hyps] + list(req.history):
            if i in rec.index.position and i not in token:
                token[i] = token_id(builder, rec, i)
    ids = list(token)
    center = mean_row(rec, builder)
    rows = dict(zip(ids, (rec.backend.output_rows([token[i] for i in ids]) - center).double().numpy())) if ids else {}
    keep = max(builder.cfg.max_history, 0)
    out = []
    for req, hyps in zip(batch, found):
        shown = [i for i in list(req.history)[len(req.history) - keep:] if i in rows] if keep else []
        picked = [rec.index.item_ids[h.item] for h in hyps]
        itself = np.array([[h == i for h in shown] for i in picked], dtype=bool)
        near = anchors(np.stack([rows[i] for i in picked]), np.stack([rows[i] for i in shown]), itself) \
            if shown and picked else [None] * len(picked)
        out.append([builder.reason_text(i, shown if a is not None else [], because=shown[a] if a is not None else None,
                                        request=req.text) for i, a in zip(picked, near)])
    return out
