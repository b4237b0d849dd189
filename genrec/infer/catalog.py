"""The items a loaded model recommends, built once per catalog: rows by id, the item index (each item's
identifier), training popularity, one trie per item ending, the popularity penalty per strength, and the items'
text embeddings that a request's words are matched against.

Why one value: the recommender, the search and the evaluation all need these together, and a model switched to
another dataset's catalog (zero-shot transfer) must switch all of them at once; building a new Catalog is that
switch. It reads as a mapping of item id -> catalog row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from genrec.infer.constrained import TokenTrie
from genrec.errors import GenrecError
from genrec.items.index import ItemIndex


class Catalog(Mapping):
    def __init__(self, rows: list[dict], index: ItemIndex, counts: dict[str, int]):
        self.rows = {row["item_id"]: row for row in rows}
        self.index = index
        self.counts = counts  # training interactions per item, most popular first
        self.popular = list(counts)
        self._tries: dict[int, TokenTrie] = {}
        self._penalties: dict[float, list[float]] = {}
        self._text = None  # MiniLM embeddings of the items' text, index order (`text_penalty`)

    def __getitem__(self, item_id: str) -> dict:
        return self.rows[item_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def trie(self, builder) -> TokenTrie:
        """The items' token sequences as `builder` ends them (EOS, or the newline before a reason or the next
        line, or nothing: item tokens), one trie per ending, built on first use."""
        key = tuple(builder.item_ending)
        if key not in self._tries:
            self._tries[key] = TokenTrie([builder.item_tokens(t) for t in self.index.targets])
        return self._tries[key]

    def penalty(self, strength: float) -> list[float] | None:
        """Per item (index order) `strength * log(1 + training count)`: subtracted from an item's log-probability,
        it down-weights popular items (0 = none; at 1 an item seen 10x as often needs ~10x the model probability)."""
        if strength < 0 or not math.isfinite(strength):
            raise GenrecError(f"popularity penalty must be a finite number >= 0, got {strength}")
        if not strength:
            return None
        if strength not in self._penalties:
            self._penalties[strength] = [strength * math.log1p(self.counts.get(i, 0)) for i in self.index.item_ids]
        return self._penalties[strength]

    def text_embeddings(self):
        """[items, 384] MiniLM embeddings of the items' text (index order), read on first use (`genrec serve` reads
        them before it listens, when its model matches request text), from genrec's cache when an earlier process
        read the same texts (`catalog_embeddings`)."""
        import torch

        from genrec.items.text import catalog_embeddings, item_text

        if self._text is None:
            self._text = torch.from_numpy(catalog_embeddings([item_text(self.rows[i]) for i in self.index.item_ids]))
        return self._text

    def text_penalty(self, texts: list[str], weight: float):
        """[texts, items] (float64, index order): weight x (1 - cosine(request, item text)), both read by MiniLM.
        Subtracted from an item's log-probability it ranks by log p + weight x cosine: the request's words matched
        against every item's text, which the model's reading of them alone does not (yet) do as well (measured:
        `genrec evaluate --task request`)."""
        import torch

        from genrec.items.text import text_embeddings

        return self._cosine_penalty(torch.from_numpy(text_embeddings(texts)), weight)

    def history_penalty(self, histories: list[list[str]], weight: float):
        """[histories, items] (float64, index order): weight x (1 - cosine(the history's text, item text)), the
        history's text being the mean MiniLM row of its items (`history_vectors`, the content baseline's user).
        Subtracted from an item's log-probability it ranks by log p + weight x that cosine: what the items' texts
        say about the history beside what the model learned, most use for items it saw little or never (cold)."""
        return self._cosine_penalty(history_vectors(self.index.item_ids, self.text_embeddings(), histories), weight)

    def _cosine_penalty(self, queries, weight: float):
        """weight x (1 - cosine(query row, item text row)) for each query row and item, float64."""
        return weight * (1 - (queries @ self.text_embeddings().t()).double()).clamp_min(0)

    def fallback(self, k: int, seen: set[str]) -> list[str]:
        """The k most popular training items outside `seen` (the answer to a request with nothing to go on)."""
        return [i for i in self.popular if i not in seen and i in self.rows][:k]


def history_vectors(ids: list[str], emb, histories: list[list[str]]):
    """[histories, d]: each history as the mean of its items' rows of `emb` (in `ids` order; items not in `ids`
    are passed over, a history with none is the zero row). The one definition of a user read from item texts: the
    content baseline's user and `history_penalty`'s."""
    import torch

    pos = {i: n for n, i in enumerate(ids)}
    rows = [[pos[i] for i in h if i in pos] for h in histories]
    return torch.stack([emb[r].mean(0) if r else torch.zeros(emb.shape[1], dtype=emb.dtype) for r in rows])
