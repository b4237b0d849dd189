"""Standard baselines on the same split and users as the LLM: most-popular and SASRec.

SASRec here is a compact re-implementation of Kang & McAuley (ICDM 2018): learned item + position embeddings,
causal pre-norm self-attention blocks, shared input/output item embeddings; trained with full cross-entropy over
all items at every position (the "SASRec+ / CE" variant of Klenitskiy & Vasilev, RecSys 2023, which beats the
original 1-negative BCE), early-stopped on the validation targets.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import torch
from torch import nn


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


class SASRec(nn.Module):
    def __init__(self, n_items: int, max_len: int = 50, dim: int = 64, layers: int = 2, heads: int = 1,
                 dropout: float = 0.2):
        super().__init__()
        self.max_len = max_len
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)  # 0 = padding
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="relu")
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        L = seq.shape[1]
        x = self.item(seq) * math.sqrt(self.item.embedding_dim) + self.pos(torch.arange(L, device=seq.device))
        x = self.drop(x) * (seq > 0).unsqueeze(-1)
        causal = torch.triu(torch.full((L, L), float("-inf"), device=seq.device), diagonal=1)
        h = self.blocks(x, mask=causal, is_causal=True)
        return self.norm(h)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item.weight[1:].T  # [.., n_items], item k <-> column k-1


def _pad_left(seqs: list[list[int]], L: int) -> torch.Tensor:
    out = torch.zeros((len(seqs), L), dtype=torch.long)
    for r, s in enumerate(seqs):
        s = s[-L:]
        if s:
            out[r, L - len(s):] = torch.tensor(s)
    return out


def train_sasrec(train_seqs: list[list[int]], valid: list[tuple[list[int], int]], n_items: int, seed: int = 42,
                 max_len: int = 50, epochs: int = 200, patience: int = 10, batch_size: int = 128,
                 max_seconds: float | None = None, log=print) -> SASRec:
    """Item ids are 1..n_items. Early stopping on NDCG@10 of `valid` (history, target) pairs; `max_seconds`
    bounds training time (reported, so a budget-limited baseline is never mistaken for a converged one)."""
    import time

    t0 = time.time()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = SASRec(n_items, max_len=max_len)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    # Every item of long sequences is used: windows of max_len + 1 items, newest first.
    seqs = [s[max(0, end - max_len - 1):end] for s in train_seqs for end in range(len(s), 1, -max_len)]
    best, best_state, bad = -1.0, None, 0
    for epoch in range(epochs):
        model.train()
        rng.shuffle(seqs)
        for start in range(0, len(seqs), batch_size):
            batch = seqs[start:start + batch_size]
            inp = _pad_left([s[:-1] for s in batch], max_len)
            tgt = _pad_left([s[1:] for s in batch], max_len)
            logits = model.scores(model(inp))
            mask = tgt > 0
            loss = nn.functional.cross_entropy(logits[mask], tgt[mask] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ndcg = _ndcg10(model, valid)
        if ndcg > best + 1e-5:
            best, bad = ndcg, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
        if max_seconds is not None and time.time() - t0 > max_seconds:
            log(f"SASRec: stopped by the {max_seconds:.0f}s time budget")
            break
    log(f"SASRec: {epoch + 1} epochs, best valid NDCG@10 {best:.4f}")
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


@torch.no_grad()
def sasrec_scores(model: SASRec, histories: list[list[int]], seen: list[set[int]] | None = None) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(histories), 256):
        h = model(_pad_left(histories[start:start + 256], model.max_len))[:, -1]
        s = model.scores(h)
        if seen is not None:
            for r, items in enumerate(seen[start:start + 256]):
                idx = [i - 1 for i in items if i > 0]
                if idx:
                    s[r, idx] = float("-inf")
        out.append(s.numpy())
    return np.concatenate(out) if out else np.zeros((0, model.item.num_embeddings - 1))


def _ndcg10(model: SASRec, valid: list[tuple[list[int], int]]) -> float:
    if not valid:
        return 0.0
    scores = sasrec_scores(model, [h for h, _ in valid], [set(h) for h, _ in valid])
    total = 0.0
    for r, (_, t) in enumerate(valid):
        rank = int((scores[r] > scores[r, t - 1]).sum()) + 1
        if rank <= 10:
            total += 1 / math.log2(rank + 1)
    return total / len(valid)
