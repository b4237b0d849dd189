"""Item identifiers (what the model writes for an item) and the token trie that constrains decoding to them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GenrecError
from .files import read_json, write_json

ID_STYLES = ("title",)


@dataclass
class ItemIndex:
    """Maps catalog items to their generation target strings; one target per item, all distinct."""

    style: str
    item_ids: list[str]
    targets: list[str]
    disambiguated: int = 0
    position: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.position = {item: i for i, item in enumerate(self.item_ids)}

    @classmethod
    def build(cls, catalog: list[dict], style: str = "title") -> ItemIndex:
        if style not in ID_STYLES:
            raise GenrecError(f"unknown item identifier style {style!r} (available: {', '.join(ID_STYLES)})")
        titles = [" ".join(str(row["title"]).split()) for row in catalog]  # one line: never a new prompt field
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
        return cls(style=style, item_ids=[r["item_id"] for r in catalog], targets=targets, disambiguated=n_dis)

    def save(self, path: str | Path) -> None:
        write_json(path, {"style": self.style, "disambiguated": self.disambiguated,
                          "items": [{"item_id": i, "target": t} for i, t in zip(self.item_ids, self.targets)]})

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        data = read_json(path)
        return cls(style=data["style"], item_ids=[r["item_id"] for r in data["items"]],
                   targets=[r["target"] for r in data["items"]], disambiguated=data.get("disambiguated", 0))


class TokenTrie:
    """Prefix tree over token sequences; a leaf (reached through the end token) names one item."""

    def __init__(self, sequences: list[list[int]]):
        self.children: list[dict[int, int]] = [{}]
        self.parent: list[int] = [-1]
        self.leaf_item: dict[int, int] = {}
        for item, seq in enumerate(sequences):
            node = 0
            for tok in seq:
                nxt = self.children[node].get(tok)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][tok] = nxt
                    self.children.append({})
                    self.parent.append(node)
                node = nxt
            if node in self.leaf_item:
                raise GenrecError(f"items {self.leaf_item[node]} and {item} have the same token sequence")
            self.leaf_item[node] = item
        self.depth = max((len(s) for s in sequences), default=0)
        self._allowed: dict[int, list[int]] = {}

        self.leaf_of_item = {item: node for node, item in self.leaf_item.items()}
        self.end_tokens = {t for kids in self.children for t, c in kids.items() if c in self.leaf_item}

    def allowed(self, node: int, dead: set[int] | frozenset = frozenset()) -> list[int]:
        """Tokens that continue `node` towards at least one item whose leaf is not in `dead`."""
        if dead:
            return [t for t, c in self.children[node].items() if c not in dead]
        out = self._allowed.get(node)
        if out is None:
            out = self._allowed[node] = list(self.children[node])
        return out

    def dead_nodes(self, banned_items: set[int]) -> set[int]:
        """Nodes under which every item is banned (their leaves included). A beam never enters one, so it can
        never spend its width on a subtree holding only excluded (e.g. already seen) items."""
        dead = {self.leaf_of_item[i] for i in banned_items if i in self.leaf_of_item}
        frontier = list(dead)
        while frontier:
            p = self.parent[frontier.pop()]
            if p >= 0 and p not in dead and all(c in dead for c in self.children[p].values()):
                dead.add(p)
                frontier.append(p)
        return dead

    def subtree_min(self, item_values: list[float]) -> list[float]:
        """Per node, the smallest value of any item below it (a leaf: its item's value)."""
        out = [float("inf")] * len(self.children)
        for node, item in self.leaf_item.items():
            out[node] = item_values[item]
        for node in range(len(self.children) - 1, 0, -1):  # children always have larger ids than parents
            p = self.parent[node]
            if out[node] < out[p]:
                out[p] = out[node]
        return out

    def step(self, node: int, token: int) -> int | None:
        return self.children[node].get(token)

    def walk(self, tokens: list[int]) -> int | None:
        node = 0
        for t in tokens:
            node = self.children[node].get(t)
            if node is None:
                return None
        return node
