"""A prepared dataset as the rest of genrec reads it (`PreparedData`): the leave-one-out splits, the catalog, each
user's whole sequence, and the one definition of which interactions are history and which is a split's target."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from genrec.errors import GenrecError
from genrec.files import read_json, read_jsonl


COLD_ITEMS = "cold_items.json"  # the items `--cold-items` held out of training (absent: none were)


@dataclass
class PreparedData:
    """A prepared dataset directory, loaded."""

    path: Path
    manifest: dict
    catalog: dict[str, dict]  # item_id -> {item_id, title, attrs}
    users: dict[str, dict]  # user_id -> {items, timestamps}
    cold_items: frozenset = frozenset()  # held out of training and validation (`--cold-items`)

    # Leave-one-out, owned here and nowhere else: a user's last item is the test target, the one before it the
    # validation target, everything before that the training part.
    HELD_OUT = {"test": 1, "valid": 2}  # a split's target: this many positions from the end of the sequence
    MIN_SEQUENCE = HELD_OUT["valid"] + 1  # the shortest sequence to split: a valid target with history before it

    @classmethod
    def train_items(cls, user: dict) -> list[str]:
        """The training part of a user's sequence: everything before the valid and test targets (leave-one-out)."""
        return user["items"][:-cls.HELD_OUT["valid"]]

    @classmethod
    def target_positions(cls, n: int) -> dict[str, range]:
        """Where each split's targets lie in a sequence of n interactions (preparation writes one example each):
        every item of the training part that has one before it (its history), then the valid and test targets."""
        valid, test = n - cls.HELD_OUT["valid"], n - cls.HELD_OUT["test"]
        return {"train": range(1, valid), "valid": range(valid, valid + 1), "test": range(test, test + 1)}

    @classmethod
    def before_target(cls, user: dict, split: str, key: str = "items") -> list:
        """The user's `key` values (items, timestamps, ratings) before the target of `split` (valid or test)."""
        if split not in cls.HELD_OUT:
            raise GenrecError(f"unknown split {split!r} (valid, test)")
        return user[key][:-cls.HELD_OUT[split]]

    @classmethod
    def target(cls, user: dict, split: str) -> str:
        """The held-out item of `split` (valid or test)."""
        return user["items"][-cls.HELD_OUT[split]]

    def training_counts(self) -> Counter:
        """Interactions per item in the training part of every sequence (what most-popular ranks by)."""
        counts: Counter = Counter()
        for user in self.users.values():
            counts.update(self.train_items(user))
        return counts

    def split(self, name: str):
        from datasets import load_from_disk

        ds = load_from_disk(str(self.path / "dataset"))
        if name not in ds:
            raise GenrecError(f"{self.path} has no split '{name}' (splits: {', '.join(ds.keys())})")
        return ds[name]


def sample_negative(rng: random.Random, item_ids: list[str], interacted: set[str]) -> str | None:
    """A catalog item the user never interacted with (None if there is none)."""
    if len(interacted) >= len(item_ids):
        return None
    while True:
        item = item_ids[rng.randrange(len(item_ids))]
        if item not in interacted:
            return item


def is_prepared(path: str | Path) -> bool:
    """Whether `path` is a prepared genrec dataset (what `genrec data prepare` writes)."""
    return (Path(path) / "manifest.json").is_file() and (Path(path) / "dataset").is_dir()


def load_prepared(path: str | Path) -> PreparedData:
    path = Path(path)
    if not is_prepared(path):
        raise GenrecError(f"{path} is not a prepared genrec dataset (run `genrec data prepare` first)")
    manifest = read_json(path / "manifest.json")
    catalog = {row["item_id"]: row for row in read_jsonl(path / "catalog.jsonl")}
    users = {row["user_id"]: row for row in read_jsonl(path / "users.jsonl")}
    cold = frozenset(read_json(path / COLD_ITEMS)) if (path / COLD_ITEMS).is_file() else frozenset()
    return PreparedData(path=path, manifest=manifest, catalog=catalog, users=users, cold_items=cold)
