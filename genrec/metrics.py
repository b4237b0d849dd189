"""Per-user ranking metrics and their uncertainty: what a quality claim needs beside the mean.

A mean over 100 users decides nothing when one hit moves NDCG@10 by 0.01, so every report carries a 95% bootstrap
interval (users resampled with replacement, seeded) for each metric, and for a model against a baseline the
*paired* difference: both are resampled on the same users, which removes the between-user variance the two share
and is the comparison that can exclude 0 when the unpaired intervals overlap.
"""

from __future__ import annotations


import numpy as np

from .errors import GenrecError


def target_ranks(ranked: list[list[str]], targets: list[str]) -> list[int | None]:
    """1-based rank of each target in its list, None when it is not in the list."""
    return [recs.index(t) + 1 if t in recs else None for recs, t in zip(ranked, targets)]


def per_user(ranks: list[int | None], ks: list[int]) -> dict[str, np.ndarray]:
    """One value per user for HR@K, NDCG@K (one relevant item: 1/log2(rank+1)) and MRR (0 when not listed)."""
    out: dict[str, np.ndarray] = {}
    r = np.array([x if x is not None else 0 for x in ranks], dtype=float)
    listed = r > 0
    for k in ks:
        hit = listed & (r <= k)
        out[f"HR@{k}"] = hit.astype(float)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(np.where(listed, r, 1) + 1), 0.0)
    out["MRR"] = np.where(listed, 1.0 / np.where(listed, r, 1), 0.0)
    return out


def bootstrap_draws(n: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """[resamples, n] user indices drawn with replacement; one draw serves every model, so intervals of
    differences are paired."""
    if n == 0:
        raise GenrecError("no users to bootstrap over")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def interval(values: np.ndarray, draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` over the resampled users."""
    means = values[draws].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summary(values: dict[str, np.ndarray], draws: np.ndarray) -> dict[str, dict]:
    """metric -> {mean, lo, hi}."""
    out = {}
    for name, v in values.items():
        lo, hi = interval(v, draws)
        out[name] = {"mean": float(v.mean()), "lo": lo, "hi": hi}
    return out


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], draws: np.ndarray) -> dict[str, dict]:
    """metric -> {diff, lo, hi, excludes_zero} for mean(a) - mean(b) over the same users."""
    out = {}
    for name in a:
        if name not in b:
            continue
        d = a[name] - b[name]
        lo, hi = interval(d, draws)
        out[name] = {"diff": float(d.mean()), "lo": lo, "hi": hi, "excludes_zero": bool(lo > 0 or hi < 0)}
    return out


def fmt_ci(s: dict) -> str:
    """0.0523 [0.0401, 0.0650]"""
    return f"{s['mean']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]"


def fmt_diff(d: dict) -> str:
    mark = " *" if d["excludes_zero"] else ""
    return f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{mark}"
