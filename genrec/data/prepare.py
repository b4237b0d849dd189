"""Data preparation: raw interactions + item catalog -> leave-one-out splits as an HF DatasetDict.

A prepared directory holds:
  dataset/        DatasetDict(train, valid, test); rows: user_id, history, history_ts, target, target_ts, context
                  (+ history_ratings, target_rating when the interactions have ratings)
  catalog.jsonl   one item per line: item_id, title, attrs (other text fields)
  users.jsonl     each user's full chronological sequence (items, timestamps, ratings): for exclusion of seen items,
                  user-id lookup at generation, and sequential baselines
  manifest.json   source files and hashes, options, counts
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.config import DataConfig, to_dict
from genrec.errors import GenrecError
from genrec.data.prepared import COLD_ITEMS
from genrec.data.read import (
    CONTROL_CHARS, DERIVED_CONTEXT, ITEM_ALIASES, RATING_ALIASES, TIME_ALIASES, TITLE_ALIASES, USER_ALIASES,
    derived_context, hash_user_ids, parse_timestamps, pick_column, read_table,
)
from genrec.files import atomic_dir, sha256_file, write_json, write_jsonl


def _kcore(df: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    while True:
        item_counts = df["item"].map(df["item"].value_counts())
        user_counts = df["user"].map(df["user"].value_counts())
        keep = (item_counts >= min_item) & (user_counts >= min_user)
        if keep.all():
            return df
        df = df[keep]


def hold_out_cold_items(df: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """The cold-item protocol: a seeded `share` of the items loses every interaction except where it is a user's
    last one (the test target), so training and validation never see it; users left with fewer than 3
    interactions are dropped. `df` is sorted chronologically per user. Why: an item added after training is what
    a collaborative model (SASRec, most-popular) cannot recommend and a model that reads item text can."""
    if not 0 <= share < 1:
        raise GenrecError(f"cold_items must be in [0, 1), got {share}")
    items = sorted(set(df["item"]))
    n = round(share * len(items))
    if n == 0:
        return df, []
    cold = sorted(np.random.default_rng(seed).choice(items, size=n, replace=False).tolist())
    last = ~df["user"].duplicated(keep="last")  # each user's last interaction: the test target
    df = df[~df["item"].isin(set(cold)) | last]
    df = df[df["user"].map(df["user"].value_counts()) >= 3]
    return df, cold


def prepare(cfg: DataConfig, log=print) -> dict:
    """Validate, filter, split and write a prepared dataset atomically; return the manifest."""
    inter = read_table(cfg.interactions, "interactions")
    cat = read_table(cfg.catalog, "catalog")

    u_col = pick_column(inter, cfg.user_col, USER_ALIASES, "user", "interactions")
    i_col = pick_column(inter, cfg.item_col, ITEM_ALIASES, "item", "interactions")
    t_col = pick_column(inter, cfg.time_col, TIME_ALIASES, "timestamp", "interactions")
    r_col = pick_column(inter, cfg.rating_col, RATING_ALIASES, "rating", "interactions", required=False)
    ci_col = pick_column(cat, cfg.catalog_item_col or cfg.item_col, ITEM_ALIASES, "item", "catalog")
    # --title-col none (e.g. LC-Rec's ASIN-only data): the item id stands in as title; the catalog has no text.
    title_col = None if cfg.title_col == "none" else pick_column(
        cat, None if cfg.title_col in ("auto", "") else cfg.title_col, TITLE_ALIASES, "title", "catalog")
    for c in cfg.context_cols:
        pick_column(inter, c, [], "context", "interactions")
    for f in cfg.derive_context:
        if f not in DERIVED_CONTEXT:
            raise GenrecError(f"unknown derived context {f!r} (available: {', '.join(DERIVED_CONTEXT)})")
    text_cols = cfg.text_cols
    if text_cols is None:
        text_cols = [c for c in cat.columns if c not in (ci_col, title_col)]
    for c in text_cols:
        pick_column(cat, c, [], "text", "catalog")

    # --- catalog checks
    cat = cat.copy()
    cat[ci_col] = cat[ci_col].fillna("").astype(str).str.strip()
    if (cat[ci_col] == "").any():
        row = int(np.flatnonzero((cat[ci_col] == "").to_numpy())[0])
        raise GenrecError(f"catalog: empty item id in data row {row + 1}")
    dup = cat[ci_col][cat[ci_col].duplicated()]
    if len(dup):
        raise GenrecError(f"catalog: {len(dup)} duplicate item id(s), first {dup.iloc[0]!r}")
    titles = cat[title_col].fillna("").astype(str) if title_col else cat[ci_col]
    empty = titles.str.strip() == ""
    if empty.any():
        raise GenrecError(f"catalog: {int(empty.sum())} item(s) with an empty title, "
                          f"first item id {cat[ci_col][empty].iloc[0]!r}")

    # --- interactions
    n_raw = len(inter)
    df = pd.DataFrame({
        "user": inter[u_col].fillna("").astype(str).str.strip(),
        "item": inter[i_col].fillna("").astype(str).str.strip(),
        "ts": parse_timestamps(inter[t_col], "interactions"),
        "row": np.arange(n_raw),
    })
    if r_col is not None:  # kept for rating prediction and --min-rating
        ratings = pd.to_numeric(inter[r_col], errors="coerce")
        if ratings.isna().any():
            row = int(np.flatnonzero(ratings.isna().to_numpy())[0])
            raise GenrecError(f"interactions: rating {inter[r_col].iloc[row]!r} in data row {row + 1} is not a number")
        df["rating"] = ratings.to_numpy(dtype=float)
    for c in cfg.context_cols:
        df["ctx_" + c] = inter[c].fillna("").astype(str)
    if ((df["user"] == "") | (df["item"] == "")).any():
        row = int(np.flatnonzero(((df["user"] == "") | (df["item"] == "")).to_numpy())[0])
        raise GenrecError(f"interactions: empty user or item id in data row {row + 1}")
    if cfg.hash_user_ids:
        df["user"] = hash_user_ids(df["user"], cfg.user_id_salt)
    bad = (df["user"].str.contains(CONTROL_CHARS) | df["item"].str.contains(CONTROL_CHARS)).to_numpy()
    if bad.any():
        raise GenrecError(f"interactions: control character in a user or item id in data row "
                          f"{int(np.flatnonzero(bad)[0]) + 1} (a corrupted file?)")
    if cfg.min_rating is not None:
        if r_col is None:
            raise GenrecError("--min-rating was given but the interactions have no rating column")
        df = df[df["rating"] >= cfg.min_rating]
    known = df["item"].isin(set(cat[ci_col]))
    n_unknown = int((~known).sum())
    if n_unknown and cfg.strict:
        raise GenrecError(f"interactions: {n_unknown} row(s) name items absent from the catalog, "
                          f"first {df['item'][~known].iloc[0]!r} (drop them by leaving out --strict)")
    df = df[known]
    df = _kcore(df, max(3, cfg.min_user_interactions), max(1, cfg.min_item_interactions))
    if df.empty:
        raise GenrecError("no interactions left after filtering (check --min-* options and item ids)")
    # Chronological per user. Equal timestamps: a seeded shuffle by default, since a file's order within a
    # timestamp can be item-id order (ml-latest-small), which would choose the held-out item by its id.
    if cfg.tie_order not in ("shuffle", "file"):
        raise GenrecError(f"tie_order must be shuffle or file, got {cfg.tie_order!r}")
    if cfg.tie_order == "shuffle":
        df = df.assign(tie=np.random.default_rng(cfg.seed).permutation(len(df)))
        df = df.sort_values(["user", "ts", "tie"], kind="stable").drop(columns="tie")
    else:
        df = df.sort_values(["user", "ts", "row"], kind="stable")

    kept_items = set(df["item"])  # after the k-core: a cold item stays in the catalog without its interactions
    df, cold = hold_out_cold_items(df, cfg.cold_items, cfg.seed)
    if df.empty:
        raise GenrecError("no users left after holding out the cold items (lower --cold-items)")
    n_users_raw = inter[u_col].nunique()
    catalog_rows = []
    dup_titles = 0
    seen_titles: set[str] = set()
    for item_id, title, *attrs in zip(cat[ci_col], titles, *[cat[c] for c in text_cols]):
        if not cfg.keep_cold_items and item_id not in kept_items:
            continue
        title = " ".join(title.split())
        if title in seen_titles:
            dup_titles += 1
        seen_titles.add(title)
        catalog_rows.append({
            "item_id": item_id,
            "title": title,
            "attrs": {c: ("" if a is None or (isinstance(a, float) and math.isnan(a)) else str(a))
                      for c, a in zip(text_cols, attrs)},
        })

    ctx_cols = ["ctx_" + c for c in cfg.context_cols]
    splits: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    users_rows = []
    H = cfg.max_history
    for user, g in df.groupby("user", sort=False):
        items = g["item"].tolist()
        ts = g["ts"].tolist()
        ctx = [dict(zip(cfg.context_cols, vals)) for vals in zip(*[g[c].tolist() for c in ctx_cols])] \
            if ctx_cols else [{} for _ in items]
        if cfg.derive_context:
            ctx = [{**c, **derived_context(t, cfg.derive_context)} for c, t in zip(ctx, ts)]
        ratings = [float(r) for r in g["rating"]] if r_col is not None else None
        users_rows.append({"user_id": user, "items": items, "timestamps": ts,
                           **({"ratings": ratings} if ratings is not None else {})})

        def example(t: int) -> dict:
            lo = max(0, t - H)
            row = {"user_id": user, "history": items[lo:t], "history_ts": ts[lo:t],
                   "target": items[t], "target_ts": ts[t], "context": json.dumps(ctx[t])}
            if ratings is not None:
                row.update(history_ratings=ratings[lo:t], target_rating=ratings[t])
            return row

        n = len(items)
        splits["test"].append(example(n - 1))
        splits["valid"].append(example(n - 2))
        for t in range(1, n - 2):
            splits["train"].append(example(t))

    if not splits["train"]:
        raise GenrecError("the training split is empty after filtering")

    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    features = Features({
        "user_id": Value("string"), "history": Sequence(Value("string")), "history_ts": Sequence(Value("int64")),
        "target": Value("string"), "target_ts": Value("int64"), "context": Value("string"),
        **({"history_ratings": Sequence(Value("float32")), "target_rating": Value("float32")} if r_col else {}),
    })
    dsd = DatasetDict({k: Dataset.from_list(v, features=features) for k, v in splits.items()})

    lengths = np.array([len(u["items"]) for u in users_rows])
    n_users, n_items, n_inter = len(users_rows), len(kept_items), len(df)
    manifest = {
        "genrec_prepared": 1,
        "sources": {
            "interactions": {"path": str(Path(cfg.interactions).resolve()), "sha256": sha256_file(cfg.interactions)},
            "catalog": {"path": str(Path(cfg.catalog).resolve()), "sha256": sha256_file(cfg.catalog)},
        },
        "options": {**to_dict(cfg), "user_id_salt": "<redacted>" if cfg.user_id_salt else None},
        "tie_order": (f"equal timestamps in a seeded random order (seed {cfg.seed})" if cfg.tie_order == "shuffle"
                      else "equal timestamps in the file's row order"),
        "columns": {"user": u_col, "item": i_col, "timestamp": t_col, "rating": r_col, "catalog_item": ci_col,
                    "title": title_col, "text": text_cols, "context": cfg.context_cols},
        "counts": {
            "raw_interactions": n_raw, "raw_users": int(n_users_raw), "catalog_items": len(cat),
            "dropped_unknown_item_interactions": n_unknown,
            "dropped_users": int(n_users_raw - n_users),
            "users": n_users, "items": n_items, "catalog_items_kept": len(catalog_rows),
            "interactions": n_inter, "density": n_inter / (n_users * n_items),
            "duplicate_titles": dup_titles,
            "train_examples": len(splits["train"]), "valid_examples": len(splits["valid"]),
            "test_examples": len(splits["test"]),
            "history_length_p50": float(np.percentile(lengths, 50)),
            "history_length_p90": float(np.percentile(lengths, 90)),
            "history_length_max": int(lengths.max()),
            "cold_items": len(cold), "cold_test_targets": sum(u["items"][-1] in set(cold) for u in users_rows),
        },
    }
    with atomic_dir(cfg.output, overwrite=cfg.overwrite) as tmp:
        dsd.save_to_disk(str(tmp / "dataset"))
        write_jsonl(tmp / "catalog.jsonl", catalog_rows)
        write_jsonl(tmp / "users.jsonl", users_rows)
        if cold:
            write_json(tmp / COLD_ITEMS, cold)
        write_json(tmp / "manifest.json", manifest)
    c = manifest["counts"]
    log(f"prepared {cfg.output}: {c['users']} users, {c['items']} items, {c['interactions']} interactions, "
        f"density {c['density']:.4f}; history length p50 {c['history_length_p50']:.0f}, "
        f"p90 {c['history_length_p90']:.0f}, max {c['history_length_max']}; "
        f"train/valid/test examples {c['train_examples']}/{c['valid_examples']}/{c['test_examples']}")
    if n_unknown:
        log(f"dropped {n_unknown} interaction(s) naming items absent from the catalog")
    if c["dropped_users"]:
        log(f"dropped {c['dropped_users']} user(s) left with too few interactions after filtering")
    if dup_titles:
        log(f"{dup_titles} duplicate title(s) in the catalog (disambiguated in the item index)")
    if cold:
        log(f"cold items: {len(cold)} items held out of training and validation; {c['cold_test_targets']} test "
            f"users have one as their target")
    return manifest
