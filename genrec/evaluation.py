"""`genrec evaluate`: leave-one-out, full ranking over the catalog, the LLM beside baselines on the same users.

Metrics per model: HR@K, NDCG@K (one relevant item: 1/log2(rank+1)), MRR over the top max(K) list (0 when the
target is not in it), validity (share of recommended ids that are catalog items), coverage (distinct recommended
items in top max(K) / catalog size), and the share of split users evaluated.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

from .baselines import popular_rankings
from .config import EvaluateConfig, to_dict
from .data import load_prepared
from .errors import GenrecError
from .files import atomic_file, write_json, write_jsonl
from .generation import Recommender, Request
from .training import train_popularity


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


def select_rows(n_rows: int, max_users: int | None, seed: int) -> list[int]:
    idx = list(range(n_rows))
    if max_users is not None and max_users < n_rows:
        idx = sorted(random.Random(seed).sample(idx, max_users))
    return idx


def markdown_table(results: dict[str, dict], ks: list[int]) -> str:
    cols = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR", "validity", "coverage"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def _bar_chart(results: dict[str, dict], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [results[n][f"HR@{k}"] for n in names], width=0.4, label=f"HR@{k}")
    ax.bar([i + 0.2 for i in x], [results[n][f"NDCG@{k}"] for n in names], width=0.4, label=f"NDCG@{k}")
    ax.set_xticks(list(x), names)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def run_evaluation(cfg: EvaluateConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    from tqdm.auto import tqdm

    if not cfg.ks or min(cfg.ks) < 1:
        raise GenrecError("--k needs positive cutoffs, e.g. 1,5,10,20")
    unknown = set(cfg.baselines) - {"popular", "sasrec"}
    if unknown:
        raise GenrecError(f"unknown baseline {sorted(unknown)[0]!r} (popular, sasrec)")
    rec = Recommender(cfg.model, cfg.dtype, cfg.backend)
    data = load_prepared(cfg.data or rec.card["data"])
    rows = data.split(cfg.split)
    chosen = select_rows(len(rows), cfg.max_users, cfg.seed)
    offset = 1 if cfg.split == "test" else 2  # position of the target from the end of the user's sequence
    kmax = max(cfg.ks)
    catalog = set(rec.index.item_ids)

    requests, targets, seen = [], [], []
    for i in chosen:
        row = rows[i]
        items = data.users[row["user_id"]]["items"]
        prior = set(items[:-offset])
        requests.append(Request(user_id=row["user_id"], history=row["history"], history_ts=row["history_ts"],
                                context=json.loads(row["context"]), seen=prior if cfg.exclude_seen else set()))
        targets.append(row["target"])
        seen.append(prior if cfg.exclude_seen else set())

    t0 = time.time()
    ranked: list[list[str]] = []
    lines = []
    bar = tqdm(total=len(requests), desc=f"genrec {cfg.split}", unit="user")
    for start in range(0, len(requests), cfg.batch_size):
        chunk = requests[start:start + cfg.batch_size]
        for req, res in zip(chunk, rec.recommend(chunk, kmax, cfg.beam_width, cfg.exclude_seen)):
            ids = [r["item_id"] for r in res["recommendations"]]
            ranked.append(ids)
            lines.append({"user_id": req.user_id, "target": targets[len(ranked) - 1], "recommended": ids})
        bar.update(len(chunk))
    bar.close()
    gen_seconds = time.time() - t0
    results = {"genrec": rank_metrics(ranked, targets, cfg.ks, catalog)}

    counts = train_popularity(data)
    if "popular" in cfg.baselines:
        results["popular"] = rank_metrics(popular_rankings(counts, seen, kmax), targets, cfg.ks, catalog)
    if "sasrec" in cfg.baselines:
        results["sasrec"] = _sasrec_results(data, chosen, rows, offset, seen, targets, cfg, catalog, log)

    out = Path(cfg.output) if cfg.output else Path(cfg.model) / f"eval-{cfg.split}"
    md = markdown_table(results, cfg.ks)
    report = {
        "split": cfg.split, "users_evaluated": len(chosen), "users_in_split": len(rows),
        "fraction_evaluated": len(chosen) / len(rows), "catalog_items": len(catalog),
        "genrec_seconds": round(gen_seconds, 2), "genrec_users_per_second": round(len(chosen) / gen_seconds, 3),
        "results": results, "settings": to_dict(cfg),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", report)
    with atomic_file(out / "metrics.md") as fh:
        fh.write(f"Split `{cfg.split}`: {len(chosen)}/{len(rows)} users, full ranking over {len(catalog)} items, "
                 f"exclude seen = {cfg.exclude_seen}.\n\n{md}\n")
    write_jsonl(out / "recommendations.jsonl", lines)
    k_plot = 10 if 10 in cfg.ks else kmax
    _bar_chart(results, k_plot, out / "metrics.png")
    report["markdown"] = md
    report["output"] = str(out)
    log(f"report written to {out}/metrics.json, metrics.md, metrics.png")
    return report


def _sasrec_results(data, chosen, rows, offset, seen, targets, cfg, catalog, log) -> dict:
    from .baselines import sasrec_scores, train_sasrec

    ids = {item: n + 1 for n, item in enumerate(sorted(catalog))}
    inv = {v: k for k, v in ids.items()}
    seqs = {u: [ids[i] for i in row["items"] if i in ids] for u, row in data.users.items()}
    # Train on everything before the validation target; early-stop on the validation targets.
    train = [s[:-2] for s in seqs.values()]
    valid = [(s[:-2], s[-2]) for s in seqs.values() if len(s) >= 3]
    random.Random(cfg.seed).shuffle(valid)
    t0 = time.time()
    model = train_sasrec(train, valid[:1000], len(ids), seed=cfg.seed, max_seconds=cfg.sasrec_seconds, log=log)
    log(f"SASRec trained in {time.time() - t0:.0f}s")
    hist = [seqs[rows[i]["user_id"]][:-offset] for i in chosen]
    scores = sasrec_scores(model, hist, [{ids[i] for i in s if i in ids} for s in seen])
    kmax = max(cfg.ks)
    import numpy as np

    top = np.argsort(-scores, axis=1)[:, :kmax]
    ranked = [[inv[int(j) + 1] for j in row if np.isfinite(scores[r, j])] for r, row in enumerate(top)]
    return rank_metrics(ranked, targets, cfg.ks, catalog)
