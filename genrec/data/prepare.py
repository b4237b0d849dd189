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
from genrec.data.prepared import COLD_ITEMS, PreparedData, is_prepared
from genrec.data.read import (
    CONTROL_CHARS,
    DERIVED_CONTEXT,
    ITEM_ALIASES,
    RATING_ALIASES,
    TIME_ALIASES,
    TITLE_ALIASES,
    USER_ALIASES,
    derived_context,
    hash_user_ids,
    parse_timestamps,
    pick_column,
    read_table,
)
from genrec.files import atomic_dir, sha256_file, write_json, write_jsonl


def prepare(cfg: DataConfig, log=print) -> dict:
    """Validate, filter, split and write a prepared dataset atomically; return the manifest.

    The recipe: find the columns, check the catalog, read and filter the interactions into each user's
    chronological sequence, hold out the cold items, split leave-one-out, write, report."""
    check_output(cfg)
    inter = read_table(cfg.interactions, "interactions")
    cat = read_table(cfg.catalog, "catalog")
    columns = find_columns(cfg, inter, cat)
    cat, titles = check_catalog(cat, columns)
    df = read_interactions(cfg, inter, columns)
    df, n_unknown = filter_interactions(cfg, df, set(cat[columns["catalog_item"]]))
    df = order_chronologically(cfg, df)
    kept_items = set(df["item"])  # after the k-core: a cold item stays in the catalog without its interactions
    df, cold = hold_out_cold_items(df, cfg.cold_items, cfg.seed)
    if df.empty:
        raise GenrecError("no users left after holding out the cold items (lower --cold-items)")
    items, dup_titles = catalog_rows(cfg, cat, titles, columns, kept_items)
    splits, users = split_leave_one_out(cfg, df)
    raw = {"raw_interactions": len(inter), "raw_users": int(inter[columns["user"]].nunique()),
           "catalog_items": len(cat), "dropped_unknown_item_interactions": n_unknown}
    counts = summary_counts(raw, users, len(kept_items), len(df), items, dup_titles, splits, cold)
    manifest = make_manifest(cfg, columns, counts)
    write_prepared(cfg, splits, items, users, cold, manifest)
    log_summary(log, cfg.output, counts)
    return manifest


def find_columns(cfg: DataConfig, inter: pd.DataFrame, cat: pd.DataFrame) -> dict:
    """The column of each role in the two tables (named by an option or found by its aliases), as the manifest
    records them; every named context and text column must exist."""
    columns = {
        "user": pick_column(inter, cfg.user_col, USER_ALIASES, "user", "interactions"),
        "item": pick_column(inter, cfg.item_col, ITEM_ALIASES, "item", "interactions"),
        "timestamp": pick_column(inter, cfg.time_col, TIME_ALIASES, "timestamp", "interactions"),
        "rating": pick_column(inter, cfg.rating_col, RATING_ALIASES, "rating", "interactions", required=False),
    }
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
    return {**columns, "catalog_item": ci_col, "title": title_col, "text": text_cols, "context": cfg.context_cols}


def check_catalog(cat: pd.DataFrame, columns: dict) -> tuple[pd.DataFrame, pd.Series]:
    """The catalog with its item ids stripped, and each item's title (its id under --title-col none); an empty or
    duplicate id, or an empty title, is an error."""
    ci_col, title_col = columns["catalog_item"], columns["title"]
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
    return cat, titles


def read_interactions(cfg: DataConfig, inter: pd.DataFrame, columns: dict) -> pd.DataFrame:
    """One row per interaction: user, item, ts (unix seconds), row (in the file), rating (when there is a
    column), ctx_<column> per context column; user ids pseudonymised under --hash-user-ids. An empty id, a
    control character in an id or a rating that is not a number is an error."""
    r_col = columns["rating"]
    df = pd.DataFrame({
        "user": inter[columns["user"]].fillna("").astype(str).str.strip(),
        "item": inter[columns["item"]].fillna("").astype(str).str.strip(),
        "ts": parse_timestamps(inter[columns["timestamp"]], "interactions"),
        "row": np.arange(len(inter)),
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
    return df


def filter_interactions(cfg: DataConfig, df: pd.DataFrame, catalog_ids: set[str]) -> tuple[pd.DataFrame, int]:
    """The interactions kept (--min-rating, items in the catalog, the k-core) and how many named unknown items."""
    if cfg.min_rating is not None:
        if "rating" not in df.columns:
            raise GenrecError("--min-rating was given but the interactions have no rating column")
        df = df[df["rating"] >= cfg.min_rating]
    known = df["item"].isin(catalog_ids)
    n_unknown = int((~known).sum())
    if n_unknown and cfg.strict:
        raise GenrecError(f"interactions: {n_unknown} row(s) name items absent from the catalog, "
                          f"first {df['item'][~known].iloc[0]!r} (drop them by leaving out --strict)")
    df = df[known]
    df = _kcore(df, max(PreparedData.MIN_SEQUENCE, cfg.min_user_interactions), max(1, cfg.min_item_interactions))
    if df.empty:
        raise GenrecError("no interactions left after filtering (check --min-* options and item ids)")
    return df, n_unknown


def _kcore(df: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    while True:
        item_counts = df["item"].map(df["item"].value_counts())
        user_counts = df["user"].map(df["user"].value_counts())
        keep = (item_counts >= min_item) & (user_counts >= min_user)
        if keep.all():
            return df
        df = df[keep]


def order_chronologically(cfg: DataConfig, df: pd.DataFrame) -> pd.DataFrame:
    """Chronological per user. Equal timestamps: a seeded shuffle by default, since a file's order within a
    timestamp can be item-id order (ml-latest-small), which would choose the held-out item by its id."""
    if cfg.tie_order not in ("shuffle", "file"):
        raise GenrecError(f"tie_order must be shuffle or file, got {cfg.tie_order!r}")
    if cfg.tie_order == "shuffle":
        df = df.assign(tie=np.random.default_rng(cfg.seed).permutation(len(df)))
        return df.sort_values(["user", "ts", "tie"], kind="stable").drop(columns="tie")
    return df.sort_values(["user", "ts", "row"], kind="stable")


def hold_out_cold_items(df: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """The cold-item protocol: a seeded `share` of the items loses every interaction except where it is a user's
    test target, so training and validation never see it; users left too short to split are dropped. `df` is
    sorted chronologically per user. Why: an item added after training is what a collaborative model (SASRec,
    most-popular) cannot recommend and a model that reads item text can."""
    if not 0 <= share < 1:
        raise GenrecError(f"cold_items must be in [0, 1), got {share}")
    items = sorted(set(df["item"]))
    n = round(share * len(items))
    if n == 0:
        return df, []
    cold = sorted(np.random.default_rng(seed).choice(items, size=n, replace=False).tolist())
    from_end = df.groupby("user", sort=False).cumcount(ascending=False)  # 0: each user's last interaction
    test_target = from_end == PreparedData.HELD_OUT["test"] - 1
    df = df[~df["item"].isin(set(cold)) | test_target]
    df = df[df["user"].map(df["user"].value_counts()) >= PreparedData.MIN_SEQUENCE]
    return df, cold


def catalog_rows(cfg: DataConfig, cat: pd.DataFrame, titles: pd.Series, columns: dict,
                 kept_items: set[str]) -> tuple[list[dict], int]:
    """The catalog as written (the items kept, or every item under --keep-cold-items), titles with their
    whitespace collapsed, and how many titles repeat an earlier one."""
    text_cols = columns["text"]
    rows = []
    dup_titles = 0
    seen_titles: set[str] = set()
    for item_id, title, *attrs in zip(cat[columns["catalog_item"]], titles, *[cat[c] for c in text_cols]):
        if not cfg.keep_cold_items and item_id not in kept_items:
            continue
        title = " ".join(title.split())
        if title in seen_titles:
            dup_titles += 1
        seen_titles.add(title)
        rows.append({
            "item_id": item_id,
            "title": title,
            "attrs": {c: ("" if a is None or (isinstance(a, float) and math.isnan(a)) else str(a))
                      for c, a in zip(text_cols, attrs)},
        })
    return rows, dup_titles


def split_leave_one_out(cfg: DataConfig, df: pd.DataFrame) -> tuple[dict[str, list[dict]], list[dict]]:
    """The examples of each split and each user's whole sequence. Which interactions are a split's targets is
    PreparedData's to say (`target_positions`); an example's history is the `max_history` interactions before
    its target, its context that of the target."""
    ctx_cols = ["ctx_" + c for c in cfg.context_cols]
    splits: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    users = []
    H = cfg.max_history
    for user, g in df.groupby("user", sort=False):
        items = g["item"].tolist()
        ts = g["ts"].tolist()
        ctx = [dict(zip(cfg.context_cols, vals)) for vals in zip(*[g[c].tolist() for c in ctx_cols])] \
            if ctx_cols else [{} for _ in items]
        if cfg.derive_context:
            ctx = [{**c, **derived_context(t, cfg.derive_context)} for c, t in zip(ctx, ts)]
        ratings = [float(r) for r in g["rating"]] if "rating" in g.columns else None
        users.append({"user_id": user, "items": items, "timestamps": ts,
                      **({"ratings": ratings} if ratings is not None else {})})

        def example(t: int) -> dict:
            lo = max(0, t - H)
            row = {"user_id": user, "history": items[lo:t], "history_ts": ts[lo:t],
                   "target": items[t], "target_ts": ts[t], "context": json.dumps(ctx[t])}
            if ratings is not None:
                row.update(history_ratings=ratings[lo:t], target_rating=ratings[t])
            return row

        for split, positions in PreparedData.target_positions(len(items)).items():
            splits[split].extend(example(t) for t in positions)
    if not splits["train"]:
        raise GenrecError("the training split is empty after filtering")
    return splits, users


def summary_counts(raw: dict, users: list[dict], n_items: int, n_inter: int, items: list[dict], dup_titles: int,
                   splits: dict[str, list[dict]], cold: list[str]) -> dict:
    """The manifest's counts: `raw` (what was read) and what was written."""
    lengths = np.array([len(u["items"]) for u in users])
    return {
        **raw, "dropped_users": int(raw["raw_users"] - len(users)),
        "users": len(users), "items": n_items, "catalog_items_kept": len(items),
        "interactions": n_inter, "density": n_inter / (len(users) * n_items),
        "duplicate_titles": dup_titles,
        "train_examples": len(splits["train"]), "valid_examples": len(splits["valid"]),
        "test_examples": len(splits["test"]),
        "history_length_p50": float(np.percentile(lengths, 50)),
        "history_length_p90": float(np.percentile(lengths, 90)),
        "history_length_max": int(lengths.max()),
        "cold_items": len(cold),
        "cold_test_targets": sum(PreparedData.target(u, "test") in set(cold) for u in users),
    }


def make_manifest(cfg: DataConfig, columns: dict, counts: dict) -> dict:
    """Where the data came from (paths and hashes), the options (never the salt), the columns used, the counts."""
    return {
        "genrec_prepared": 1,
        "sources": {
            "interactions": {"path": str(Path(cfg.interactions).resolve()), "sha256": sha256_file(cfg.interactions)},
            "catalog": {"path": str(Path(cfg.catalog).resolve()), "sha256": sha256_file(cfg.catalog)},
        },
        "options": {**to_dict(cfg), "user_id_salt": "<redacted>" if cfg.user_id_salt else None},
        "tie_order": (f"equal timestamps in a seeded random order (seed {cfg.seed})" if cfg.tie_order == "shuffle"
                      else "equal timestamps in the file's row order"),
        "columns": columns,
        "counts": counts,
    }


def check_output(cfg: DataConfig) -> None:
    """--overwrite replaces a prepared dataset (or an empty directory), never a directory genrec did not write:
    refused before any work."""
    out = Path(cfg.output)
    if cfg.overwrite and out.exists() and (not out.is_dir() or any(out.iterdir())) and not is_prepared(out):
        raise GenrecError(f"{out} exists and is not a prepared genrec dataset: --overwrite replaces only those "
                          "(choose another --output)")


def write_prepared(cfg: DataConfig, splits: dict[str, list[dict]], items: list[dict], users: list[dict],
                   cold: list[str], manifest: dict) -> None:
    """Write the prepared directory atomically: all of it or, on any error, nothing."""
    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    features = Features({
        "user_id": Value("string"), "history": Sequence(Value("string")), "history_ts": Sequence(Value("int64")),
        "target": Value("string"), "target_ts": Value("int64"), "context": Value("string"),
        **({"history_ratings": Sequence(Value("float32")), "target_rating": Value("float32")}
           if manifest["columns"]["rating"] else {}),
    })
    dsd = DatasetDict({k: Dataset.from_list(v, features=features) for k, v in splits.items()})
    with atomic_dir(cfg.output, overwrite=cfg.overwrite) as tmp:
        dsd.save_to_disk(str(tmp / "dataset"))
        write_jsonl(tmp / "catalog.jsonl", items)
        write_jsonl(tmp / "users.jsonl", users)
        if cold:
            write_json(tmp / COLD_ITEMS, cold)
        write_json(tmp / "manifest.json", manifest)


def log_summary(log, output: str, c: dict) -> None:
    """The summary line, and a line for each thing dropped, repeated or held out."""
    log(f"prepared {output}: {c['users']} users, {c['items']} items, {c['interactions']} interactions, "
        f"density {c['density']:.4f}; history length p50 {c['history_length_p50']:.0f}, "
        f"p90 {c['history_length_p90']:.0f}, max {c['history_length_max']}; "
        f"train/valid/test examples {c['train_examples']}/{c['valid_examples']}/{c['test_examples']}")
    if c["dropped_unknown_item_interactions"]:
        log(f"dropped {c['dropped_unknown_item_interactions']} interaction(s) naming items absent from the catalog")
    if c["dropped_users"]:
        log(f"dropped {c['dropped_users']} user(s) left with too few interactions after filtering")
    if c["duplicate_titles"]:
        log(f"{c['duplicate_titles']} duplicate title(s) in the catalog (disambiguated in the item index)")
    if c["cold_items"]:
        log(f"cold items: {c['cold_items']} items held out of training and validation; {c['cold_test_targets']} test "
            f"users have one as their target")
