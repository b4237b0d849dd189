"""Reading what a user hands genrec: interaction and catalog tables in any of the common formats, their columns
found by name (the aliases below), timestamps in any of the usual encodings. Preparation and `genrec catalog add`
read files through here, so a column is found the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from genrec.errors import GenrecError


USER_ALIASES = ["user_id", "userId", "user", "uid", "reviewerID", "user_id:token"]


ITEM_ALIASES = ["item_id", "itemId", "movieId", "item", "iid", "asin", "product_id", "item_id:token"]


TIME_ALIASES = ["timestamp", "time", "ts", "datetime", "date", "unixReviewTime", "timestamp:float"]


RATING_ALIASES = ["rating", "score", "stars", "overall", "rating:float"]


TITLE_ALIASES = ["title", "name", "item_title", "title:token_seq"]


CONTROL_CHARS = r"[\x00-\x1f\x7f]"


TABLE_KINDS = (".csv", ".tsv", ".tab", ".txt", ".inter", ".item", ".jsonl", ".json", ".ndjson", ".parquet")


DERIVED_CONTEXT = ("time_of_day", "day_of_week", "hour")


def derived_context(ts: int, fields: list[str]) -> dict[str, str]:
    """Context read off a unix timestamp (UTC): the scene an interaction happened in, known at request time."""
    import datetime as dt

    t = dt.datetime.fromtimestamp(int(ts), dt.UTC)
    values = {"hour": str(t.hour), "day_of_week": t.strftime("%A"),
              "time_of_day": ("night", "morning", "afternoon", "evening")[t.hour // 6]}
    return {f: values[f] for f in fields}


def hash_user_ids(users: pd.Series, salt: str | None) -> pd.Series:
    """HMAC-SHA256(salt, raw id), 16 hex digits: prepared data, training examples, models and reports then carry
    no raw user id. The salt is never written anywhere; without one (option or GENREC_USER_ID_SALT) a random salt
    is used, so the pseudonyms cannot be linked back, nor reproduced by a later run."""
    import hmac
    import os
    import secrets

    key = (salt or os.environ.get("GENREC_USER_ID_SALT") or secrets.token_hex(32)).encode()
    cache: dict[str, str] = {}

    def one(u: str) -> str:
        if u not in cache:
            cache[u] = hmac.new(key, u.encode(), "sha256").hexdigest()[:16]
        return cache[u]

    return users.map(one)


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """Read CSV / TSV / JSONL / Parquet (optionally .gz) with every column as string."""
    path = Path(path)
    if not path.exists():
        raise GenrecError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise GenrecError(f"{what} path {path} is a directory, expected a file")
    if path.stat().st_size == 0:
        raise GenrecError(f"{what} file {path} is empty")
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ".csv"
    if kind not in TABLE_KINDS:
        raise GenrecError(f"{what} file {path}: unsupported file type {kind!r} (use {', '.join(TABLE_KINDS)}, "
                          "optionally .gz)")
    try:
        if kind == ".parquet":
            df = pd.read_parquet(path).astype(str)
        elif kind in (".jsonl", ".json", ".ndjson"):
            df = pd.read_json(path, lines=True, dtype=False, encoding="utf-8", encoding_errors="strict")
            if any(not isinstance(c, str) for c in df.columns):
                raise GenrecError(f"{what} file {path}: every line must be a JSON object")
            df = df.astype(str).where(df.notna(), None)
        else:
            sep = "\t" if kind in (".tsv", ".tab", ".inter", ".item") else ","
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                             encoding="utf-8", encoding_errors="strict")
    except UnicodeDecodeError as exc:
        raise GenrecError(f"{what} file {path} is not valid UTF-8 (byte offset {exc.start})") from None
    except (ValueError, pd.errors.ParserError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GenrecError(f"{what} file {path} could not be parsed: {first}") from None
    if df.empty or len(df.columns) == 0:
        raise GenrecError(f"{what} file {path} has no rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def pick_column(df: pd.DataFrame, given: str | None, aliases: list[str], role: str, what: str,
                 required: bool = True) -> str | None:
    if given is not None:
        if given not in df.columns:
            raise GenrecError(f"{what} has no column '{given}' for {role} (columns: {', '.join(df.columns)})")
        return given
    for name in aliases:
        if name in df.columns:
            return name
    if required:
        raise GenrecError(f"{what} has no {role} column (looked for {', '.join(aliases)}; "
                          f"columns: {', '.join(df.columns)}); name it with the matching --*-col option")
    return None


def parse_timestamps(values: pd.Series, what: str) -> np.ndarray:
    """Unix seconds from numbers or ISO-like dates; any missing or unparsable value is an error."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().any():  # a numeric column: every value must be a finite number
        arr = numeric.to_numpy(dtype=float)
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise GenrecError(f"{what}: timestamp {values.iloc[row]!r} in data row {row + 1} cannot be parsed")
        return arr.astype(np.int64)
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise GenrecError(f"{what}: timestamp {values.iloc[row]!r} in data row {row + 1} cannot be parsed")
    return (parsed.astype("int64") // 10**9).to_numpy()
