"""The metric maths of every evaluation, pure functions of lists and counts (no model, no files): rank metrics,
beyond-accuracy list metrics, AUC / log-loss / rating errors, reason grounding, and their uncertainty.

A mean over 100 users decides nothing when one hit moves NDCG@10 by 0.01, so every report carries a 95% bootstrap
interval (users resampled with replacement, seeded) for each metric, and for a model against a baseline the
*paired* difference: both are resampled on the same users, which removes the between-user variance the two share
and is the comparison that can exclude 0 when the unpaired intervals overlap.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from genrec.errors import GenrecError


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


def rank_metrics(ranked: list[list[str]], targets: list[str], ks: list[int], catalog: set[str]) -> dict:
    n = len(targets)
    if n == 0:
        raise GenrecError("no users to evaluate")
    out: dict[str, float] = {}
    ranks = []
    for recs, t in zip(ranked, targets):
        ranks.append(recs.index(t) + 1 if t in recs else None)
    for k in ks:
        out[f"HR@{k}"] = sum(1 for r in ranks if r is not None and r <= k) / n
        out[f"NDCG@{k}"] = sum(1 / math.log2(r + 1) for r in ranks if r is not None and r <= k) / n
    out["MRR"] = sum(1 / r for r in ranks if r is not None) / n
    total = sum(len(r) for r in ranked)
    out["validity"] = sum(1 for recs in ranked for i in recs if i in catalog) / total if total else 0.0
    out["coverage"] = len({i for recs in ranked for i in recs}) / len(catalog)
    out["short_lists"] = sum(1 for r in ranked if len(r) < max(ks)) / n
    return out


def _attr_tokens(row: dict) -> frozenset[str]:
    """Attribute values split on the usual list separators (MovieLens genres "A|B", category paths "A > B")."""
    out = set()
    for v in (row.get("attrs") or {}).values():
        out.update(t.strip().lower() for t in re.split(r"[|,;>]", str(v)) if t.strip())
    return frozenset(out)


def beyond_accuracy(ranked: list[list[str]], targets: list[str], counts: Counter,
                    catalog: dict[str, dict]) -> tuple[dict, float]:
    """Per-model list metrics beyond accuracy, and the test targets' mean popularity percentile for reference.

    ILD: mean pairwise Jaccard distance of the items' attribute tokens within a list (pairs where both items have
    no attributes are skipped). Novelty: mean -log2 p(item), p = (training count + 1) / (total + catalog size).
    pop_pct: mean popularity percentile of recommended items (0 = least, 1 = most popular in training).
    long_tail: share of recommended items outside the head (the most popular items holding 80% of training
    interactions).
    """
    items = list(catalog)
    n = len(items)
    order = sorted(items, key=lambda i: counts.get(i, 0))
    pct, pos = {}, 0
    while pos < n:  # ties share the mean of their ranks
        end = pos
        while end + 1 < n and counts.get(order[end + 1], 0) == counts.get(order[pos], 0):
            end += 1
        for i in order[pos:end + 1]:
            pct[i] = ((pos + end) / 2) / max(n - 1, 1)
        pos = end + 1
    total = sum(counts.values())
    head, acc = set(), 0
    for i, c in counts.most_common():
        if acc >= 0.8 * total:
            break
        head.add(i)
        acc += c
    toks = {i: _attr_tokens(catalog[i]) for i in items}
    ild, n_lists = 0.0, 0
    for recs in ranked:
        dists = [1 - len(toks[a] & toks[b]) / len(toks[a] | toks[b])
                 for x, a in enumerate(recs) for b in recs[x + 1:] if toks.get(a) or toks.get(b)]
        if dists:
            ild += sum(dists) / len(dists)
            n_lists += 1
    flat = [i for recs in ranked for i in recs if i in pct]
    out = {
        "ILD": ild / n_lists if n_lists else 0.0,
        "novelty": sum(-math.log2((counts.get(i, 0) + 1) / (total + n)) for i in flat) / len(flat) if flat else 0.0,
        "pop_pct": sum(pct[i] for i in flat) / len(flat) if flat else 0.0,
        "long_tail": sum(1 for i in flat if i not in head) / len(flat) if flat else 0.0,
    }
    target_pct = [pct[t] for t in targets if t in pct]
    return out, (sum(target_pct) / len(target_pct) if target_pct else 0.0)


def popularity_tiers(counts: Counter) -> dict[str, str]:
    """item -> head / torso / tail: the most popular items holding the first third of training interactions, the
    next third, the rest (items never seen in training are tail)."""
    total, acc, tier = sum(counts.values()), 0, {}
    for item, c in counts.most_common():
        tier[item] = "head" if acc < total / 3 else "torso" if acc < 2 * total / 3 else "tail"
        acc += c
    return tier


def attr_values(attrs: dict[str, str]) -> list[str]:
    """An item's attribute values one by one ("Adventure|Animation" is two), in order, without repeats (case
    aside): what a reason may say an item is, and what reason grounding checks it against."""
    out, seen = [], set()
    for v in attrs.values():
        for x in (x.strip() for x in re.split(r"[|,]", str(v))):
            if x and x.lower() not in seen:
                out.append(x)
                seen.add(x.lower())
    return out


TITLE_MENTION = re.compile(r"[A-Z0-9][^.,;:!?()\"]{0,80}\(\d{4}\)|\"[^\"]{2,80}\"")


def reason_grounding(cases: list[tuple[str, str, list[str]]], catalog: dict[str, dict]) -> dict:
    """How grounded free-text reasons are; `cases` are (reason, recommended item id, history item ids).

    non_catalog_title: share of reasons naming a title-like span ("Name (1999)" or a quoted string) that is no
      catalog title. unsupported_attribute: share naming an attribute value (e.g. a genre; attributes with at most
      100 distinct values) that neither the recommended item nor any history item has. mentions_item /
      mentions_history: share naming the recommended item's title / some history item's title.
    """
    titles = {" ".join(r["title"].lower().split()) for r in catalog.values()}
    values: dict[str, set[str]] = {}
    for row in catalog.values():
        for k, v in row.get("attrs", {}).items():
            values.setdefault(k, set()).update(x.lower() for x in attr_values({k: v}))
    vocab = {v for vs in values.values() if len(vs) <= 100 for v in vs if len(v) > 2}

    def item_values(i: str) -> set[str]:
        return {x.lower() for x in attr_values(catalog[i].get("attrs", {}))}

    counts = Counter()
    for reason, item, history in cases:
        text = " ".join(reason.split())
        low = text.lower()
        # where a catalog title named in the reason ends: a title-like span is one when it ends there, whether it
        # starts before the title ("Because you enjoyed Heat (1995)") or inside it ("Matrix, The (1999)": the
        # pattern stops at the comma and sees "The (1999)")
        ends = {m.end() for t in titles if t in low for m in re.finditer(r"(?<!\w)" + re.escape(t), low)}
        counts["non_catalog_title"] += any(m.end() - m.group(0).endswith('"') not in ends
                                           for m in TITLE_MENTION.finditer(text))
        allowed = item_values(item).union(*(item_values(h) for h in history if h in catalog))
        said = {v for v in vocab if re.search(rf"\b{re.escape(v)}\w*\b", low)}
        counts["unsupported_attribute"] += bool(said - allowed)
        counts["mentions_item"] += catalog[item]["title"].lower() in low
        counts["mentions_history"] += any(catalog[h]["title"].lower() in low for h in history if h in catalog)
    n = len(cases)
    return {"reasons": n, **{k: (counts[k] / n if n else 0.0) for k in (
        "non_catalog_title", "unsupported_attribute", "mentions_item", "mentions_history")}}


def auc(scores: list[float], labels: list[int]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pairs = sorted(zip(scores, labels))
    rank_sum, pos, i = 0.0, 0, 0
    while i < len(pairs):  # average ranks over ties
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        n_pos = sum(lab for _, lab in pairs[i:j + 1])
        rank_sum += n_pos * (i + j + 2) / 2
        pos += n_pos
        i = j + 1
    neg = len(pairs) - pos
    if not pos or not neg:
        raise GenrecError("AUC needs positive and negative examples")
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def log_loss(probs: list[float], labels: list[int]) -> float:
    eps = 1e-7
    return -sum(math.log(min(max(p if y else 1 - p, eps), 1)) for p, y in zip(probs, labels)) / len(probs)


def rating_errors(pred: list[float], truth: list[float]) -> dict:
    n = len(truth)
    if n == 0:
        raise GenrecError("no rated held-out interactions to evaluate")
    return {"RMSE": math.sqrt(sum((p - t) ** 2 for p, t in zip(pred, truth)) / n),
            "MAE": sum(abs(p - t) for p, t in zip(pred, truth)) / n}
