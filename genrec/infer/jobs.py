"""File jobs on a loaded Recommender: read a users file (JSONL or CSV), turn each object into a Query (items
named by id or by title, resolved against the catalog), and write recommendations (`genrec generate`, resumable and
shardable) or candidate scores (`genrec rank`) as JSONL. The HTTP server turns its JSON into Requests here too.
`show_prompt` (`genrec prompts show`) renders one prepared user as training sees it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from genrec.config import GenerateConfig, RankConfig
from genrec.errors import GenrecError
from genrec.prompts.tasks import RERANK_LABELS
from genrec.files import atomic_file, write_jsonl
from genrec.infer.hybrid import label_scores
from genrec.infer.query import Query, Search
from genrec.infer.recommender import Recommender


def read_users_file(path: str | Path) -> list[dict]:
    """JSONL (one object per line) or CSV (user_id[,history as space/|-separated ids][,request])."""
    path = Path(path)
    if not path.is_file():
        raise GenrecError(f"users file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GenrecError(f"users file {path} is not valid UTF-8 (byte offset {exc.start})") from None
    if not text.strip():
        raise GenrecError(f"users file {path} is empty")
    if path.suffix.lower() == ".csv":
        import csv
        import io

        rows = []
        for row in csv.DictReader(io.StringIO(text)):
            hist = (row.get("history") or "").replace("|", " ").split()
            rows.append({k: v for k, v in {"user_id": row.get("user_id") or None, "history": hist,
                                            "request": row.get("request") or None}.items() if v})
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GenrecError(f"users file {path} line {n}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise GenrecError(f"users file {path} line {n}: expected a JSON object")
        rows.append(obj)
    return rows


class TitleIndex:
    """Catalog titles -> item ids: exact, then case- and whitespace-insensitive; close titles for an unknown one."""

    def __init__(self, catalog: dict[str, dict]):
        self.exact: dict[str, list[str]] = {}
        self.loose: dict[str, list[str]] = {}
        for item_id, row in catalog.items():
            self.exact.setdefault(row["title"], []).append(item_id)
            self.loose.setdefault(self.norm(row["title"]), []).append(item_id)
        self.titles = sorted(self.exact)

    @staticmethod
    def norm(text: str) -> str:
        return " ".join(text.split()).casefold()

    def ids(self, title: str) -> list[str]:
        return self.exact.get(title) or self.loose.get(self.norm(title)) or []

    def find_in(self, text: str) -> list[str]:
        """The catalog items a free text names, in order of first mention: full titles ("Toy Story (1995)") and, for
        titles with a year, the name without it ("Toy Story"), matched on word boundaries, longest first; a name
        of one word matches only as the catalog writes it (so "heat" in a sentence is not "Heat"), and names under
        four characters only with their year. A name several items share reads as the first in catalog order."""
        if not hasattr(self, "_find"):
            import re

            loose: dict[str, str] = {}
            exact: dict[str, str] = {}
            for title in self.titles:
                item = self.exact[title][0]
                loose.setdefault(title.casefold(), item)
                bare = re.sub(r"\s*\(\d{4}\)$", "", title)
                if bare != title and len(bare) >= 4:
                    (loose.setdefault(bare.casefold(), item) if " " in bare else exact.setdefault(bare, item))

            def pattern(names, flags=0):
                alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                return re.compile(rf"(?<!\w)(?:{alts})(?!\w)", flags) if names else None

            self._find = [(pattern(loose, re.IGNORECASE), loose, str.casefold), (pattern(exact), exact, str)]
        hits = []
        for regex, names, key in self._find:
            if regex is not None:
                hits += [(m.start(), -len(m.group(0)), names[key(m.group(0))]) for m in regex.finditer(text)]
        kept, end = [], -1
        for start, neg_len, item in sorted(hits):  # a name inside a longer one already read is not another item
            if start >= end:
                kept.append(item)
                end = start - neg_len
        return list(dict.fromkeys(kept))

    def closest(self, text: str, n: int = 3) -> list[str]:
        import difflib

        return difflib.get_close_matches(text[:200], self.titles, n=n, cutoff=0.5)


_TITLE_INDEXES: dict[int, tuple[dict, TitleIndex]] = {}


def title_index(catalog: dict[str, dict]) -> TitleIndex:
    """One index per catalog object (built on first use; generate, rank and serve reuse it)."""
    hit = _TITLE_INDEXES.get(id(catalog))
    if hit is None or hit[0] is not catalog:
        hit = (catalog, TitleIndex(catalog))
        _TITLE_INDEXES.clear()
        _TITLE_INDEXES[id(catalog)] = hit
    return hit[1]


def resolve_items(entries: list[str], catalog: dict[str, dict], where: str) -> list[str]:
    """History entries as catalog ids: an entry is an id, else a title (exact, then case/whitespace-insensitive).
    A title shared by several items, or an entry that is neither, is a GenrecError naming the ids or the closest
    titles."""
    out = []
    for entry in entries:
        if entry in catalog:
            out.append(entry)
            continue
        index = title_index(catalog)
        ids = index.ids(entry)
        if len(ids) == 1:
            out.append(ids[0])
        elif ids:
            raise GenrecError(f"{where}: title {entry[:120]!r} is shared by items {', '.join(ids[:5])}: give the id")
        else:
            close = index.closest(entry)
            hint = f" (closest titles: {'; '.join(repr(t) for t in close)})" if close else ""
            raise GenrecError(f"{where}: unknown item {entry[:120]!r} in history: neither an item id nor a "
                              f"title{hint}")
    return out


def to_request(obj: dict, users: dict[str, dict] | None, catalog: dict[str, dict], where: str) -> Query:
    """Validate one users-file/HTTP object; raises GenrecError naming what is wrong."""
    uid = obj.get("user_id")
    if uid is not None and not isinstance(uid, (str, int)):
        raise GenrecError(f"{where}: user_id must be a string")
    hist = obj.get("history")
    if hist is not None and (not isinstance(hist, list) or not all(isinstance(i, (str, int)) for i in hist)):
        raise GenrecError(f"{where}: history must be a list of item ids or titles")
    ctx = obj.get("context") or {}
    if not isinstance(ctx, dict):
        raise GenrecError(f"{where}: context must be an object")
    req_text = obj.get("request")
    if req_text is not None and not isinstance(req_text, str):
        raise GenrecError(f"{where}: request must be a string")
    history: list[str] = []
    ratings = obj.get("ratings")
    if hist is not None:
        history = [str(i) for i in hist]
    elif uid is not None:
        if users is None or str(uid) not in users:
            raise GenrecError(f"{where}: unknown user_id {uid!r}")
        history = list(users[str(uid)]["items"])
        ratings = users[str(uid)].get("ratings") if ratings is None else ratings
    elif req_text is None:
        raise GenrecError(f"{where}: give user_id, history or request")
    if ratings is not None and (not isinstance(ratings, list) or len(ratings) != len(history) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) for r in ratings)):
        raise GenrecError(f"{where}: ratings must be a list of numbers, one per history item")
    history = resolve_items(history, catalog, where)
    return Query(user_id=None if uid is None else str(uid), history=history, context=ctx, text=req_text,
                   seen=set(history), ratings=ratings)


def output_settings(cfg: GenerateConfig) -> dict:
    """The settings every output line of `generate` (and `recommend --json`) records."""
    return {"k": cfg.k, "exclude_seen": cfg.exclude_seen, "backend": cfg.backend, "model": str(cfg.model),
            "with_reasons": cfg.with_reasons, "popularity_penalty": cfg.popularity_penalty, "candidates": cfg.candidates,
            "search": cfg.search}


def generate_file(cfg: GenerateConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Read a users file, write one JSONL line per user atomically; return a summary."""
    from tqdm.auto import tqdm

    shard = parse_shard(cfg.shard)
    search = Search.of(cfg)  # a bad setting fails before the model loads
    out = Path(cfg.out)
    if cfg.resume and cfg.overwrite:
        raise GenrecError("--resume keeps what --out holds and --overwrite replaces it: pass one of them")
    if out.exists() and not (cfg.resume or cfg.overwrite):
        raise GenrecError(f"output {out} already exists (pass --resume to keep its users or --overwrite to replace "
                          "it)")
    if out.is_dir():
        raise GenrecError(f"output {out} is a directory, not a file")
    rows = read_users_file(cfg.users)
    rec = load_for_data(cfg, log)
    rec.recommend([], search)  # bad settings fail before any output
    users = rec.known_users(cfg.data) if any("history" not in r for r in rows) else None
    # Progress lives in <out>.partial (appended and synced per batch) and becomes <out> at the end (sorted, atomically):
    # a crash never leaves a half-written <out>, and --resume continues from the partial file (and a finished <out>).
    partial = out.with_name(out.name + ".partial")
    if partial.exists() and not (cfg.resume or cfg.overwrite):
        raise GenrecError(f"{partial} holds an unfinished run's users (pass --resume to keep them or --overwrite "
                          "to start again)")
    done = finished_lines([out, partial]) if cfg.resume else {}
    requests, skipped = [], 0
    for n, obj in enumerate(rows, start=1):
        if shard is not None and (n - 1) % shard[1] != shard[0]:
            continue  # another shard's line; `index` keeps the line number, so shards merge by sorting on it
        try:
            requests.append((n, obj, to_request(obj, users, rec.catalog, f"users file line {n}")))
        except GenrecError as exc:
            if cfg.strict:
                raise
            skipped += 1
            log(f"warning: skipped: {exc}")
    # only lines of this run's users file and shard, for the same user, are kept
    wanted = {str(n): obj.get("user_id") for n, obj, _ in requests}
    done = {i: line for i, line in done.items() if i in wanted and json.loads(line).get("user_id") == wanted[i]}
    settings = output_settings(cfg)
    t0 = time.time()
    pending = [r for r in requests if str(r[0]) not in done]
    bar = tqdm(total=len(requests), initial=len(requests) - len(pending), desc="users", unit="user")
    out.parent.mkdir(parents=True, exist_ok=True)
    # the partial file is replaced whole (never truncated in place) by what was read from it, then appended to
    with atomic_file(partial) as fh:
        fh.write("".join(line + "\n" for line in done.values()))
    with open(partial, "a", encoding="utf-8") as fh:
        window = cfg.batch_size * 32  # users sorted by prompt length within each window: little padding per batch
        for w in range(0, len(pending), window):
            part = pending[w:w + window]
            for idx in length_batches(rec, [r for _, _, r in part], cfg.batch_size):
                chunk = [part[j] for j in idx]
                results = rec.recommend([r for _, _, r in chunk], search)
                for (n, obj, req), res in zip(chunk, results):
                    line = {"index": n, "user_id": obj.get("user_id"), **res.to_json(), "settings": settings}
                    fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                bar.update(len(chunk))
    # batches ran in prompt-length order: the output lists users in users-file order
    lines = sorted(partial.read_text(encoding="utf-8").splitlines(), key=lambda ln: json.loads(ln)["index"])
    with atomic_file(out) as fh:
        fh.write("".join(ln + "\n" for ln in lines))
    partial.unlink()
    bar.close()
    elapsed = time.time() - t0
    return {"written": len(requests), "generated": len(pending), "resumed": len(done), "skipped": skipped,
            "seconds": round(elapsed, 2), "users_per_second": round(len(pending) / elapsed, 3) if elapsed else None,
            "out": str(out)}


def finished_lines(paths: list[Path]) -> dict[str, str]:
    """Users-file line index -> its output line, from earlier output files (later files win); a torn last line
    from a crash, or anything that is not an output line, is left out and so generated again."""
    done: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("index"), int) and \
                    isinstance(obj.get("recommendations"), list):
                done[str(obj["index"])] = line
    return done


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'I/N' (0 <= I < N) -> (I, N): users-file line n belongs to shard (n - 1) % N."""
    if spec is None or spec == "":
        return None
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise GenrecError(f"--shard must be I/N, e.g. 0/4, got {spec!r}") from None
    if not 0 <= i < n:
        raise GenrecError(f"--shard {spec}: need 0 <= I < N")
    return i, n


def merge_shards(parts: list[str | Path], out: str | Path) -> int:
    """Join shard outputs of one users file into one JSONL ordered by line index (written whole or not at all)."""
    lines = []
    for p in parts:
        path = Path(p)
        if not path.is_file():
            raise GenrecError(f"shard output {path} does not exist")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                raise GenrecError(f"{path} line {n} is not valid JSON (an unfinished shard?)") from None
    idx = [x.get("index") for x in lines]
    if len(set(idx)) != len(idx):
        raise GenrecError("shard outputs overlap: a users-file line appears twice")
    write_jsonl(out, sorted(lines, key=lambda x: x["index"]))
    return len(lines)


def load_for_data(cfg: GenerateConfig | RankConfig, log) -> Recommender:
    """The model of `cfg`, recommending from the catalog of `cfg.data` when that is another dataset's."""
    from genrec.data.prepared import load_prepared

    rec = Recommender(cfg.model, cfg.dtype, cfg.backend, cfg.vllm)
    if cfg.data:
        rec.use_data(load_prepared(cfg.data), log)
    return rec


def rank_file(cfg: RankConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Re-rank each line's `candidates` by P(yes) of a preference model (or the expected rating of a rating
    model); the output is written whole or not at all."""
    rows = read_users_file(cfg.candidates)
    rec = load_for_data(cfg, log)
    users = rec.known_users(cfg.data) if any("history" not in r for r in rows) else None
    if rec.rerank_prompts is not None:  # the line's candidates under labels, one forward pass: P(label)
        score, key = (lambda reqs, cands: [[math.exp(x) for x in xs] for xs in label_scores(rec, reqs, cands)],
                      "p_label")
    else:  # a scoring model: preference before rating when it has both (neither: `score` says what to train)
        scoring = sorted((b.task for b in rec.builders.values() if b.task.scores_candidates),
                         key=lambda t: not t.samples_negatives)
        name, key = (scoring[0].name, scoring[0].output_key) if scoring else ("rating", "expected_rating")
        score = lambda reqs, cands: rec.score(name, reqs, cands)  # noqa: E731
    todo, skipped = [], 0
    for n, obj in enumerate(rows, start=1):
        where = f"candidates file line {n}"
        try:
            cands = obj.get("candidates")
            if not isinstance(cands, list) or not cands or not all(isinstance(c, (str, int)) for c in cands):
                raise GenrecError(f"{where}: candidates must be a non-empty list of item ids")
            cands = [str(c) for c in cands]
            unknown = [c for c in cands if c not in rec.catalog]
            if unknown:
                raise GenrecError(f"{where}: unknown candidate item id {unknown[0]!r}")
            if rec.rerank_prompts is not None and len(cands) > len(RERANK_LABELS):
                raise GenrecError(f"{where}: a rerank model labels at most {len(RERANK_LABELS)} candidates, got "
                                  f"{len(cands)}")
            todo.append((n, obj, to_request(obj, users, rec.catalog, where), cands))
        except GenrecError as exc:
            if cfg.strict:
                raise
            skipped += 1
            log(f"warning: skipped: {exc}")
    from tqdm.auto import tqdm

    lines = []
    for start in tqdm(range(0, len(todo), cfg.batch_size), desc="ranking", unit="batch"):
        chunk = todo[start:start + cfg.batch_size]
        probs = score([r for _, _, r, _ in chunk], [c for *_, c in chunk])
        for (n, obj, _, cands), ps in zip(chunk, probs):
            ranked = sorted(zip(cands, ps), key=lambda cp: -cp[1])
            lines.append({"index": n, "user_id": obj.get("user_id"), "ranked": [
                {"item_id": c, "title": rec.catalog[c]["title"], "rank": r, key: round(p, 6)}
                for r, (c, p) in enumerate(ranked, start=1)]})
    write_jsonl(cfg.out, lines)
    return {"written": len(lines), "skipped": skipped, "out": str(cfg.out)}


def show_prompt(data_dir: str, user_id: str, split: str, prompt_cfg, model: str) -> str:
    """The user's last example of `split` rendered with `prompt_cfg` and `model`'s tokenizer (the builder and its
    task decide what one example is)."""
    from genrec.data.prepared import load_prepared
    from genrec.items.index import ItemIndex
    from genrec.model_dir import load_tokenizer, resolve_base_model
    from genrec.prompts.sequence import make_builder

    data = load_prepared(data_dir)
    rows = data.split(split).filter(lambda r: r["user_id"] == user_id)
    if len(rows) == 0:
        raise GenrecError(f"user {user_id!r} has no example in split '{split}' of {data_dir}")
    tok = load_tokenizer(resolve_base_model(model))
    builder = make_builder(tok, prompt_cfg, data.catalog, ItemIndex.build(list(data.catalog.values())))
    return builder.preview(rows[-1], data)


def length_batches(rec, requests: list[Query], batch_size: int) -> list[list[int]]:
    """Request positions in batches of similar prompt length, longest first. A batch is left-padded to its
    longest prompt, so batching users in the order they come wastes compute on padding (41% of the prefill
    tokens for 500 Scientific test users at batch 8; 2% sorted). Results do not depend on the batching."""
    def length(req: Query) -> int:
        if not req.history and not req.text:
            return 0
        b = rec.route(req)
        if b.task.ranks_candidates:  # its prompt needs the retriever's candidates: the history stands in
            return len(req.history)
        return len(rec.prompt(b, req, Search()))  # a length to sort by: the default text_match will do

    order = sorted(range(len(requests)), key=lambda n: -length(requests[n]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
