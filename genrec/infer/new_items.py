"""`genrec catalog add`: items added to a trained item-token model's catalog, without retraining.

Each new item gets one new token and a row from its text alone: W f(item) + b for a model trained with
`item_text=grounded` (f: the base model's reading of the text, as in training; grounded.py), else the title-shaped
start every item of an `item_text=init` model began from (which training never moved for these items, so they rank
low there: what grounded rows are for). generate, evaluate, serve (HF and vLLM) and the page then recommend them.

Why a staged copy: the model directory changes in several files at once (tokenizer, merged weights, item index,
catalog, grounded state, card); they are written into a hard-linked sibling (every rewritten file replaced by
rename, so the original's files are never touched) that is swapped in whole. A failure or a kill before the swap
leaves the model as it was; bad input is refused before anything is written.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from genrec.errors import GenrecError
from genrec.items.index import id_style
from genrec.files import replace_dir, write_jsonl
from genrec.model_dir import ModelCard, load_tokenizer


def read_new_items(path: str | Path, card: ModelCard) -> list[dict]:
    """The new items as catalog rows ({item_id, title, attrs}), checked: an id and a title each, no id twice, none
    already in the model's catalog. Their attributes are the catalog's own (others are ignored, missing ones
    empty): the text a grounded row is built from reads the same fields for every item."""
    from genrec.data.read import CONTROL_CHARS, ITEM_ALIASES, TITLE_ALIASES, pick_column, read_table

    df = read_table(path, "new items")
    id_col = pick_column(df, None, ITEM_ALIASES, "item", "new items")
    title_col = pick_column(df, None, TITLE_ALIASES, "title", "new items")
    known = card.catalog_rows()
    keys = sorted({k for row in known for k in row.get("attrs", {})})
    existing = {row["item_id"] for row in known}
    rows, seen = [], set()
    for n, (item, title, *attrs) in enumerate(zip(df[id_col], df[title_col], *[
            df[k] if k in df.columns else [None] * len(df) for k in keys]), start=1):
        item = "" if item is None or (isinstance(item, float) and math.isnan(item)) else str(item).strip()
        title = "" if title is None or (isinstance(title, float) and math.isnan(title)) else " ".join(str(title).split())
        if not item:
            raise GenrecError(f"new items: empty item id in data row {n}")
        if re.search(CONTROL_CHARS, item):
            raise GenrecError(f"new items: control character in the item id of data row {n}")
        if item in seen:
            raise GenrecError(f"new items: item {item!r} appears twice")
        if item in existing:
            raise GenrecError(f"new items: item {item!r} is already in the model's catalog")
        if not title:
            raise GenrecError(f"new items: item {item!r} has no title (a new item's row is made from its text)")
        seen.add(item)
        rows.append({"item_id": item, "title": title, "attrs": {
            k: "" if a is None or (isinstance(a, float) and math.isnan(a)) else str(a) for k, a in zip(keys, attrs)}})
    if not rows:
        raise GenrecError(f"{path} holds no items")
    return rows


def add_items(model_dir: str | Path, catalog_file: str | Path, log=print) -> dict:
    """Add the items of `catalog_file` to the model in `model_dir`; returns what was done."""
    model_dir = Path(model_dir)
    card = ModelCard.load(model_dir)
    if not id_style(card.id_style).one_token or not card.merged:
        raise GenrecError(f"catalog add gives new items their own token in an item-token model (item_id=token); "
                          f"{model_dir} names items by {card.id_style}: train it again on the larger catalog")
    rows = read_new_items(catalog_file, card)
    grounded = (model_dir / ModelCard.ITEM_TEXT).is_file()
    stage = model_dir.parent / f".{model_dir.name}.catalog-add"
    shutil.rmtree(stage, ignore_errors=True)  # an earlier attempt's, never the model itself
    shutil.copytree(model_dir, stage, copy_function=os.link)  # hard links: files are replaced, never rewritten
    try:
        n_before = _write_staged(stage, card, rows, grounded, log)
        staged = ModelCard.load(stage)
        staged.stats["catalog_added"] = staged.stats.get("catalog_added", 0) + len(rows)
        staged.save()  # README, then genrec.json, last
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_dir(stage, model_dir)
    ModelCard.load(model_dir).write_readme()
    log(f"added {len(rows)} item(s) to {model_dir} ({n_before} -> {n_before + len(rows)}; rows from "
        f"{'their text through the grounded map' if grounded else 'their titles (item_text=init)'})")
    return {"added": len(rows), "items": n_before + len(rows), "rows": "grounded" if grounded else "init"}


def _grounded():
    from genrec.items import grounded

    return grounded


def _write_staged(stage: Path, card: ModelCard, rows: list[dict], grounded: bool, log) -> int:
    """Tokens, rows, index, catalog (and the grounded state) of the new items, into the staged copy."""
    import torch
    from safetensors.torch import load_file, save
    from transformers import AutoModelForCausalLM

    from genrec.files import atomic_file
    from genrec.items.index import TOKEN_FORMAT, ItemIndex
    from genrec.items.text import item_text

    index = card.item_index()
    n = len(index.item_ids)
    tokens = [TOKEN_FORMAT.format(n + i) for i in range(len(rows))]
    tok = load_tokenizer(card.dir)
    tok.add_tokens(tokens)
    model = AutoModelForCausalLM.from_pretrained(str(card.merged_path()), dtype=torch.float32)
    model.resize_token_embeddings(len(tok))
    ids = tok.convert_tokens_to_ids(tokens)
    if grounded:
        g = _grounded()
        state = load_file(str(card.dir / ModelCard.ITEM_TEXT))
        base, _ = _base_model(card)
        features = g.text_features(base, tok, [item_text(r) for r in rows])
        new_rows = g.rows_for(features, state["map.weight"], state["map.bias"])
        with torch.no_grad():
            for emb in {id(e.weight): e for e in (model.get_input_embeddings(), model.get_output_embeddings())
                        if e is not None}.values():
                emb.weight[ids] = new_rows.to(emb.weight.dtype)
        state["features"] = torch.cat([state["features"], features])
        state["residual"] = torch.cat([state["residual"], torch.zeros_like(new_rows)])
        with atomic_file(stage / ModelCard.ITEM_TEXT, "wb") as fh:
            fh.write(save({k: v.contiguous() for k, v in state.items()}))
    else:
        _grounded().item_rows_from_titles(model, tok, ItemIndex(style="token", item_ids=[r["item_id"] for r in rows],
                                                    targets=tokens, new_tokens=tokens),
                              {r["item_id"]: r for r in rows})
    # every rewritten file of the stage is written elsewhere and renamed over its hard link
    with tempfile.TemporaryDirectory(dir=stage) as tmp:
        tmp = Path(tmp)
        model.save_pretrained(str(tmp / "merged"))
        tok.save_pretrained(str(tmp / "merged"))
        tok.save_pretrained(str(tmp / "top"))
        shutil.rmtree(stage / card.merged)
        os.replace(tmp / "merged", stage / card.merged)
        for f in (tmp / "top").iterdir():
            os.replace(f, stage / f.name)
    ItemIndex(style="token", item_ids=index.item_ids + [r["item_id"] for r in rows],
              targets=index.targets + tokens, new_tokens=index.new_tokens + tokens, stats=index.stats
              ).save(stage / ModelCard.INDEX)
    write_jsonl(stage / ModelCard.CATALOG, card.catalog_rows() + rows)
    return n


def _base_model(card: ModelCard):
    """The base model as training read item texts: before any adapter, cut to the run's layers."""
    from genrec.model_dir import keep_layers, load_base

    model, tok = load_base(card.base_path(), "float32")
    keep_layers(model, card.sft.get("layers"))
    return model, tok
