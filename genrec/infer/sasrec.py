"""SASRec: the hybrid's retriever (`retriever.py`) and the strongest baseline `genrec evaluate` compares against.

A compact re-implementation of Kang & McAuley (ICDM 2018): learned item + position embeddings, causal pre-norm
self-attention blocks, shared input/output item embeddings; trained with full cross-entropy over all items at every
position (the "SASRec+ / CE" variant of Klenitskiy & Vasilev, RecSys 2023, which beats the original 1-negative
BCE), early-stopped on the validation targets.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn


class SASRec(nn.Module):
    """Item + position embeddings, causal pre-norm self-attention blocks, shared input/output item embeddings.

    As the reference implementations do: Xavier-initialised weights (never N(0,1) embeddings, whose sqrt(d)-scaled
    logits start out at ~64 and make "repeat the last item" the first thing learned), padded keys masked in
    attention (no real position ever attends to padding), dropout configurable (paper: 0.5 on sparse Amazon data,
    0.2 on MovieLens)."""

    def __init__(self, n_items: int, max_len: int = 50, dim: int = 64, layers: int = 2, heads: int = 1,
                 dropout: float = 0.2):
        super().__init__()
        self.max_len, self.heads = max_len, heads
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)  # 0 = padding
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.attn_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.ffn_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
                                 for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.p_drop = dropout
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        B, L = seq.shape
        real = seq > 0
        x = self.item(seq) * math.sqrt(self.item.embedding_dim) + self.pos(torch.arange(L, device=seq.device))
        x = self.drop(x) * real.unsqueeze(-1)
        # allowed[b, i, j]: query i may read key j: causal, key j real; every position may read itself, so padded
        # rows (never used) stay finite and real rows never see padding
        eye = torch.eye(L, dtype=torch.bool, device=seq.device)
        allowed = (torch.ones(L, L, dtype=torch.bool, device=seq.device).tril() & real[:, None, :]) | eye
        allowed = allowed[:, None]
        d = x.shape[-1] // self.heads
        for n in range(len(self.qkv)):
            q, k, v = self.qkv[n](self.attn_norm[n](x)).split(x.shape[-1], dim=-1)
            q, k, v = (t.view(B, L, self.heads, d).transpose(1, 2) for t in (q, k, v))
            a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                                           dropout_p=self.p_drop if self.training else 0.0)
            x = x + self.drop(self.out[n](a.transpose(1, 2).reshape(B, L, -1)))
            x = x + self.drop(self.ffn[n](self.ffn_norm[n](x)))
            x = x * real.unsqueeze(-1)
        return self.norm(x)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item.weight[1:].T  # [.., n_items], item k <-> column k-1


def _pad_left(seqs: list[list[int]], L: int) -> torch.Tensor:
    out = torch.zeros((len(seqs), L), dtype=torch.long)
    for r, s in enumerate(seqs):
        s = s[-L:]
        if s:
            out[r, L - len(s):] = torch.tensor(s)
    return out


def sasrec_dropout(train_seqs: list[list[int]]) -> float:
    """The reference settings: 0.5 on sparse data (short sequences, as on Amazon), 0.2 on dense (MovieLens)."""
    mean_len = sum(len(s) for s in train_seqs) / max(len(train_seqs), 1)
    return 0.5 if mean_len < 20 else 0.2


def train_sasrec(train_seqs: list[list[int]], valid: list[tuple[list[int], int]], n_items: int, seed: int = 42,
                 max_len: int = 50, max_epochs: int = 400, patience: int = 5, batch_size: int = 128,
                 eval_every: int | None = None, dropout: float | None = None, max_seconds: float | None = None,
                 log=print) -> tuple[SASRec, dict]:
    """Item ids are 1..n_items. Full softmax cross-entropy at every real position; validation NDCG@10 on `valid`
    (history, target) pairs every `eval_every` steps (default: once an epoch), early stopping after `patience`
    evaluations without improvement, the best state kept. `max_seconds` is a cap, reported when hit, so a
    budget-limited baseline is never mistaken for a converged one. Returns (model, training facts)."""
    import time

    t0 = shown = time.time()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    dropout = sasrec_dropout(train_seqs) if dropout is None else dropout
    model = SASRec(n_items, max_len=max_len, dropout=dropout)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    # Every item of long sequences is a target once: windows of max_len + 1 items, newest first.
    seqs = [s[max(0, end - max_len - 1):end] for s in train_seqs for end in range(len(s), 1, -max_len)]
    if not seqs:
        raise ValueError("SASRec needs training sequences of at least 2 items")
    steps_per_epoch = -(-len(seqs) // batch_size)
    eval_every = eval_every or steps_per_epoch
    best, best_state, bad, step, evals, capped, stop = -1.0, None, 0, 0, 0, False, False
    epoch = 0
    while epoch < max_epochs and not stop:
        model.train()
        rng.shuffle(seqs)
        for start in range(0, len(seqs), batch_size):
            batch = seqs[start:start + batch_size]
            inp = _pad_left([s[:-1] for s in batch], max_len)
            tgt = _pad_left([s[1:] for s in batch], max_len)
            mask = tgt > 0
            h = model(inp)[mask]  # logits at real positions only
            loss = nn.functional.cross_entropy(model.scores(h), tgt[mask] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % eval_every == 0:
                evals += 1
                ndcg = _ndcg10(model, valid)
                model.train()
                if ndcg > best + 1e-5:
                    best, bad = ndcg, 0
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
                if time.time() - shown >= 30:  # a long training says where it is, twice a minute at most
                    shown = time.time()
                    log(f"SASRec: epoch {step / steps_per_epoch:.0f}, valid NDCG@10 {ndcg:.4f} (best {best:.4f}; "
                        f"stops after {patience} evaluations without a gain), {shown - t0:.0f}s")
                if bad >= patience:
                    stop = True
                    break
            if max_seconds is not None and time.time() - t0 > max_seconds:
                capped = stop = True
                break
        epoch += 1
    if best_state is None or capped:  # evaluate the state reached when stopped by the cap
        ndcg = _ndcg10(model, valid)
        if ndcg > best:
            best, best_state = ndcg, {k: v.clone() for k, v in model.state_dict().items()}
    facts = {"steps": step, "epochs": round(step / steps_per_epoch, 2), "evaluations": evals,
             "best_valid_ndcg10": round(best, 5), "seconds": round(time.time() - t0, 1), "dropout": dropout,
             "capped": capped, "converged": not capped and bad >= patience}
    if capped:
        log(f"SASRec: stopped by the {max_seconds:.0f}s cap after {facts['epochs']} epochs (not converged)")
    log(f"SASRec: {facts['epochs']} epochs ({step} steps), best valid NDCG@10 {best:.4f}")
    model.load_state_dict(best_state)
    return model.eval(), facts


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
    scores = sasrec_scores(model, [h for h, _ in valid], [set(h) - {t} for h, t in valid])  # target rankable
    total = 0.0
    for r, (_, t) in enumerate(valid):
        rank = int((scores[r] > scores[r, t - 1]).sum()) + 1
        if rank <= 10:
            total += 1 / math.log2(rank + 1)
    return total / len(valid)
