"""The collaborative retriever a model directory can carry: SASRec over the catalog, trained on the training part
of every sequence (the last two items of a user are valid/test) and early-stopped on the validation targets.

Why it lives inside the model directory: the two-stage recommenders at our scale (LlamaRec and kin) let a
sequential model propose K candidates and the LLM decide among them with one forward pass. Generate, evaluate,
rank and serve then need the very retriever the reranker was trained against, with no extra flag, so it is saved
beside the adapter (`<model>/retriever/`) and loaded with it. This module is also the one owner of the mapping
between catalog ids and SASRec's item numbers (1..n in sorted id order, 0 = padding), which the SASRec baseline of
`genrec evaluate` uses too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genrec.errors import GenrecError
from genrec.files import atomic_dir
from genrec.model_dir import ModelCard

KINDS = ("sasrec",)


class Retriever:
    """SASRec plus its item map: histories of catalog ids in, the top items (and their scores) out."""

    def __init__(self, model, items: list[str], facts: dict, settings: dict):
        self.model, self.items, self.facts, self.settings = model, list(items), dict(facts), dict(settings)
        self.number = {item: n + 1 for n, item in enumerate(self.items)}

    @classmethod
    def train(cls, data, seed: int = 42, max_seconds: float | None = None, dropout: float | None = None,
              log=print) -> Retriever:
        """SASRec on the training part of every user's sequence of `data` (a PreparedData), early-stopped on every
        user's validation target; `max_seconds` caps it (and the facts say so)."""
        from genrec.infer.sasrec import train_sasrec

        items = sorted(data.catalog)
        number = {item: n + 1 for n, item in enumerate(items)}
        train = [[number[i] for i in data.train_items(u) if i in number] for u in data.users.values()]
        valid = [(t, number[data.target(u, "valid")]) for t, u in zip(train, data.users.values())
                 if len(u["items"]) >= 3 and data.target(u, "valid") in number]
        if not any(len(s) >= 2 for s in train):
            raise GenrecError(f"the retriever needs users with at least 4 interactions in {data.path}")
        model, facts = train_sasrec(train, valid, len(items), seed=seed, max_seconds=max_seconds, dropout=dropout,
                                    log=log)
        return cls(model, items, facts, {"kind": "sasrec", "max_len": model.max_len, "dropout": facts["dropout"],
                                         "dim": model.item.embedding_dim, "layers": len(model.qkv),
                                         "heads": model.heads, "seed": seed})

    @classmethod
    def cached(cls, data, seed: int = 42, max_seconds: float | None = None, dropout: float | None = None,
               log=print) -> tuple[Retriever, bool]:
        """`train`'s SASRec for `data`, kept in the prepared data directory (`sasrec-cache/<key>/`, the key hashing
        the data's manifest, the settings and SASRec's code) and read back by later calls with the same key;
        (retriever, whether it was read back). Why: every evaluation with the SASRec row, and every benchmark arm,
        trained it again: 16-30 CPU-minutes on ml-latest-small, for the same numbers. A cache that cannot be read
        is trained again; one that cannot be written is only logged."""
        import hashlib

        from genrec.infer import sasrec

        code = hashlib.sha256(Path(sasrec.__file__).read_bytes() + Path(__file__).read_bytes()).hexdigest()
        key = hashlib.sha256(json.dumps([data.manifest, seed, max_seconds, dropout, code], sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
        path = Path(data.path) / "sasrec-cache" / key
        try:
            found = cls.load(path)
        except GenrecError as exc:
            log(f"retraining SASRec: {exc}")
            found = None
        if found is not None:
            return found, True
        r = cls.train(data, seed=seed, max_seconds=max_seconds, dropout=dropout, log=log)
        try:
            r.write(path)
        except OSError as exc:
            log(f"SASRec not cached in {path.parent} ({exc})")
        return r, False

    def save(self, model_dir: str | Path) -> Path:
        """Write `<model_dir>/retriever/` whole or not at all."""
        return self.write(Path(model_dir) / ModelCard.RETRIEVER)

    def write(self, target: Path) -> Path:
        """Write the retriever folder `target` whole or not at all (a temporary directory renamed into place)."""
        from safetensors.torch import save_file

        with atomic_dir(target, overwrite=True) as tmp:
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "sasrec.safetensors"))
            (tmp / "retriever.json").write_text(json.dumps(
                {"settings": self.settings, "facts": self.facts, "items": self.items}), encoding="utf-8")
        return target

    @classmethod
    def load(cls, model_dir: str | Path) -> Retriever | None:
        """The retriever saved in a model directory (or the retriever folder itself), or None when there is none."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from genrec.infer.sasrec import SASRec

        path = Path(model_dir)
        path = path if (path / "retriever.json").is_file() else path / ModelCard.RETRIEVER
        if not (path / "retriever.json").is_file():
            return None
        try:
            meta = json.loads((path / "retriever.json").read_text(encoding="utf-8"))
            s = meta["settings"]
            model = SASRec(len(meta["items"]), max_len=s["max_len"], dim=s["dim"], layers=s["layers"],
                           heads=s["heads"], dropout=s["dropout"])
            model.load_state_dict(load_file(str(path / "sasrec.safetensors")))
        except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError, SafetensorError) as exc:
            raise GenrecError(f"{path} is not a readable retriever ({str(exc).splitlines()[0][:160]})") from None
        return cls(model.eval(), meta["items"], meta.get("facts", {}), s)

    def scores(self, histories: list[list[str]], seen: list[set[str]] | None = None) -> np.ndarray:
        """[users, items] scores (column j is self.items[j]); items in `seen` are -inf. Unknown ids are skipped."""
        from genrec.infer.sasrec import sasrec_scores

        nums = [[self.number[i] for i in h if i in self.number] for h in histories]
        excl = [{self.number[i] for i in s if i in self.number} for s in seen] if seen is not None else None
        return sasrec_scores(self.model, nums, excl)

    def top(self, histories: list[list[str]], seen: list[set[str]] | None, k: int) -> list[list[tuple[str, float]]]:
        """The k best (item id, score) per history, best first; ties keep catalog order; excluded items never."""
        s = self.scores(histories, seen)
        k = min(k, s.shape[1])
        out = []
        for row in s:
            part = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            order = part[np.lexsort((part, -row[part]))]
            out.append([(self.items[j], float(row[j])) for j in order if np.isfinite(row[j])])
        return out


def parse_candidates(spec: str | None) -> int | None:
    """'retriever:K' -> K (generation within the retriever's K candidates); 'catalog' -> 0 (the whole catalog, even
    for a model with a tuned hybrid); None/'' -> None (the model's tuned hybrid if it has one, else the catalog)."""
    if not spec:
        return None
    if spec == "catalog":
        return 0
    kind, _, k = str(spec).partition(":")
    if kind != "retriever" or not k.isdigit() or int(k) < 1:
        raise GenrecError(f"--candidates must be retriever:K with K >= 1 or catalog, got {spec!r}")
    return int(k)


def parse_candidate_sizes(spec: str | None) -> list[int]:
    """'retriever:K' or 'retriever:K1,K2,...' -> [K1, K2, ...], sorted (`genrec tune-fusion` chooses among them)."""
    kind, _, ks = str(spec or "").partition(":")
    sizes = [k.strip() for k in ks.split(",")]
    if kind != "retriever" or not all(k.isdigit() and int(k) >= 1 for k in sizes):
        raise GenrecError(f"--candidates must be retriever:K or retriever:K1,K2,... with every K >= 1, got {spec!r}")
    return sorted({int(k) for k in sizes})
