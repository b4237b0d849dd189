"""Item identifiers: what the model writes for an item, one style's rules per class, and the index that maps
items to them (saved as a model directory's item_index.json)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from genrec.errors import GenrecError
from genrec.files import read_json, write_json

TOKEN_FORMAT = "<item_{}>"  # item_id=token: the one vocabulary token of item number n


def one_line(title) -> str:
    """An item's title as the index reads it: one line with single spaces (never a new prompt field)."""
    return " ".join(str(title).split())


@dataclass(frozen=True)
class Targets:
    """What an identifier style writes for a catalog: one target string per item (all distinct), the tokens the
    vocabulary must grow by, and what building them measured."""

    targets: list[str]
    new_tokens: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    disambiguated: int = 0


class IdStyle:
    """An identifier style's rules, in one place: how it writes a catalog's items (`targets`) and the behaviour
    that follows from that, which training, prompts, search and `catalog add` ask of it instead of comparing
    style names.

    new_vocabulary     its targets are new tokens, whose rows training learns (semantic, token)
    one_token          an item is exactly one new token: no end marker after it, one softmax ranks the catalog,
                       one row per item that text can ground (token)
    writes_words       the identifier is the item's words (title): a model can be searched over a catalog it was not
                       trained on, and needs no alignment examples tying identifiers to titles
    chat_framed        prompts are wrapped in the chat template by default (all but token, whose sequence
                       template writes no words to frame)
    """

    name = ""
    new_vocabulary = False
    one_token = False
    writes_words = False
    chat_framed = True

    def targets(self, catalog: list[dict], histories: list[list[str]] | None, has_text: bool, seed: int,
                levels: int, codebook: int, text_weight: float) -> Targets:
        raise NotImplementedError

    def summary(self, n_items: int, stats: dict) -> str | None:
        """One line on what building the targets found, for the training log (None: nothing to say)."""
        return None


class TitleIds(IdStyle):
    """The item's title; a duplicate title gets its item id appended (the first keeps its title)."""

    name = "title"
    writes_words = True

    def targets(self, catalog, histories, has_text, seed, levels, codebook, text_weight):
        titles = [one_line(row["title"]) for row in catalog]
        counts = Counter(titles)
        targets, seen, n_dis = [], set(), 0
        for row, title in zip(catalog, titles):
            plain = title
            if counts[title] > 1 and title in seen:
                title = f"{title} [{row['item_id']}]"
                n_dis += 1
            seen.add(plain)
            targets.append(title)
        if len(set(targets)) != len(targets):
            raise GenrecError("item targets are not unique even after disambiguation")
        return Targets(targets, disambiguated=n_dis)


class NumberIds(IdStyle):
    """A number from a seeded random permutation, zero-padded ("0427"): never the catalog order, where "next item
    = last id + 1" would leak through sequentially assigned ids."""

    name = "id"

    def targets(self, catalog, histories, has_text, seed, levels, codebook, text_weight):
        order = list(range(len(catalog)))
        random.Random(seed).shuffle(order)
        width = len(str(max(len(catalog) - 1, 0)))
        return Targets([str(n).zfill(width) for n in order], stats={"seed": seed, "digits": width})


class SemanticIds(IdStyle):
    """A short code of new tokens from residual k-means over text + co-occurrence (semantic.py)."""

    name = "semantic"
    new_vocabulary = True

    def targets(self, catalog, histories, has_text, seed, levels, codebook, text_weight):
        from genrec.items.semantic import code_tokens, semantic_targets
        from genrec.items.text import item_text

        pos = {r["item_id"]: n for n, r in enumerate(catalog)}
        texts = [item_text(r) for r in catalog] if has_text else None
        seqs = [[pos[i] for i in h if i in pos] for h in (histories or [])]
        targets, stats = semantic_targets(texts, seqs, len(catalog), levels, codebook, text_weight, seed)
        return Targets(targets, code_tokens(levels, min(codebook, len(catalog)), stats["extra_codes"]),
                       {**stats, "seed": seed})

    def summary(self, n_items, stats):
        return (f"semantic ids: {stats['distinct_prefixes']} distinct codes of {stats['levels']} levels for "
                f"{n_items} items ({stats['collided_items']} items share a code, disambiguated; "
                f"text {'on' if stats['text'] else 'off'})")


class TokenIds(IdStyle):
    """One new vocabulary token per item ("<item_17>", numbered in catalog order: the number is never read by the
    model, only the token's own row). `stats["text"]`: the rows can start from the titles."""

    name = "token"
    new_vocabulary = one_token = True
    chat_framed = False

    def targets(self, catalog, histories, has_text, seed, levels, codebook, text_weight):
        targets = [TOKEN_FORMAT.format(n) for n in range(len(catalog))]
        return Targets(targets, list(targets), {"text": has_text})


ID_STYLE: dict[str, IdStyle] = {s.name: s for s in (TitleIds(), NumberIds(), SemanticIds(), TokenIds())}
ID_STYLES = tuple(ID_STYLE)


def id_style(name: str) -> IdStyle:
    """The rules of identifier style `name`; an unknown name is a one-line error."""
    if name not in ID_STYLE:
        raise GenrecError(f"unknown item identifier style {name!r} (available: {', '.join(ID_STYLES)})")
    return ID_STYLE[name]


@dataclass
class ItemIndex:
    """Maps catalog items to their generation target strings; one target per item, all distinct, written by the
    identifier style's rules (`rules`: TitleIds, NumberIds, SemanticIds, TokenIds above).

    Why `token` is the default: an item is one position, so a training window holds ~8x more targets per token
    than titles, and the next item's distribution over the whole catalog is one softmax (a search of depth one is
    exact).
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
        made = id_style(style).targets(catalog, histories, has_text, seed, levels, codebook, text_weight)
        return cls(style=style, item_ids=[r["item_id"] for r in catalog], targets=made.targets,
                   disambiguated=made.disambiguated, new_tokens=made.new_tokens, stats=made.stats)

    @property
    def rules(self) -> IdStyle:
        """What this index's identifier style implies (see IdStyle)."""
        return ID_STYLE[self.style]

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
