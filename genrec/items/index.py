"""Item identifiers (what the model writes for an item) and the token trie that constrains decoding to them."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from genrec.errors import GenrecError
from genrec.files import read_json, write_json

ID_STYLES = ("title", "id", "semantic", "token")
TOKEN_FORMAT = "<item_{}>"  # item_id=token: the one vocabulary token of item number n


def one_line(title) -> str:
    """An item's title as the index reads it: one line with single spaces (never a new prompt field)."""
    return " ".join(str(title).split())


@dataclass
class ItemIndex:
    """Maps catalog items to their generation target strings; one target per item, all distinct.

    title     the item's title (duplicates get their item id appended)
    id        a number from a seeded random permutation, zero-padded digits ("0427"): never the catalog
              order, where "next item = last id + 1" would leak through sequentially assigned ids
    semantic  a short code of new tokens from residual k-means over text + co-occurrence (semantic.py)
    token     one new vocabulary token per item ("<item_17>", numbered in catalog order: a token's number is
              never read by the model, only its own embedding, which training starts from the item's title)
    `new_tokens` are the tokens the model's vocabulary must be extended with (semantic and token).

    Why `token`: an item is one position, so a training window holds ~8x more targets per token than titles, and
    the next item's distribution over the whole catalog is one softmax (a search of depth one is exact).
    """

    style: str
    item_ids: list[str]
    targets: list[str]
    disambiguated: int = 0
    new_tokens: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    position: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.position = {item: i for i, item in enumerate(self.item_ids)}

    @classmethod
    def build(cls, catalog: list[dict], style: str = "title", histories: list[list[str]] | None = None,
              has_text: bool = True, seed: int = 0, levels: int = 3, codebook: int = 256,
              text_weight: float = 0.5) -> ItemIndex:
        """`histories` (training sequences of item ids) feed the collaborative half of semantic ids."""
        if style not in ID_STYLES:
            raise GenrecError(f"unknown item identifier style {style!r} (available: {', '.join(ID_STYLES)})")
        item_ids = [r["item_id"] for r in catalog]
        if style == "id":
            order = list(range(len(catalog)))
            random.Random(seed).shuffle(order)
            width = len(str(max(len(catalog) - 1, 0)))
            return cls(style=style, item_ids=item_ids, targets=[str(n).zfill(width) for n in order],
                       stats={"seed": seed, "digits": width})
        if style == "token":
            targets = [TOKEN_FORMAT.format(n) for n in range(len(catalog))]
            return cls(style=style, item_ids=item_ids, targets=targets, new_tokens=list(targets),
                       stats={"text": has_text})  # text: the rows can start from the titles (training.py)
        if style == "semantic":
            from genrec.items.semantic import code_tokens, semantic_targets
            from genrec.items.text import item_text

            pos = {i: n for n, i in enumerate(item_ids)}
            texts = [item_text(r) for r in catalog] if has_text else None
            seqs = [[pos[i] for i in h if i in pos] for h in (histories or [])]
            targets, stats = semantic_targets(texts, seqs, len(catalog), levels, codebook, text_weight, seed)
            return cls(style=style, item_ids=item_ids, targets=targets, stats={**stats, "seed": seed},
                       new_tokens=code_tokens(levels, min(codebook, len(catalog)), stats["extra_codes"]))
        titles = [one_line(row["title"]) for row in catalog]
        counts = Counter(titles)
        targets, seen, n_dis = [], set(), 0
        for row, title in zip(catalog, titles):
            plain = title
            # Duplicate titles: the first keeps its title, later ones get their item id appended (deterministic).
            if counts[title] > 1 and title in seen:
                title = f"{title} [{row['item_id']}]"
                n_dis += 1
            seen.add(plain)
            targets.append(title)
        if len(set(targets)) != len(targets):
            raise GenrecError("item targets are not unique even after disambiguation")
        return cls(style=style, item_ids=item_ids, targets=targets, disambiguated=n_dis)

    def item_of(self, target: str) -> str | None:
        """The item id a target string names (the round trip of targets[position[item]])."""
        if not hasattr(self, "_by_target"):
            self._by_target = dict(zip(self.targets, self.item_ids))
        return self._by_target.get(target)

    def save(self, path: str | Path) -> None:
        write_json(path, {"style": self.style, "disambiguated": self.disambiguated, "stats": self.stats,
                          "new_tokens": self.new_tokens,
                          "items": [{"item_id": i, "target": t} for i, t in zip(self.item_ids, self.targets)]})

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        data = read_json(path)
        return cls(style=data["style"], item_ids=[r["item_id"] for r in data["items"]],
                   targets=[r["target"] for r in data["items"]], disambiguated=data.get("disambiguated", 0),
                   new_tokens=data.get("new_tokens", []), stats=data.get("stats", {}))
