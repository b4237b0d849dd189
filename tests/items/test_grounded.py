"""Text-grounded item tokens (item_text=grounded) for real: the rows a model saves are W f + b + r, an item without
training interactions keeps r = 0 (its row from its text alone), and the saved model serves as an ordinary one."""

from __future__ import annotations

import pytest

from conftest import built_once, tiny_sft_config
from genrec.errors import GenrecError


@pytest.fixture(scope="module")
def cold_data(tmp_path_factory, tiny_raw):
    from genrec.config import DataConfig
    from genrec.data.prepare import prepare

    def build(d):
        prepare(DataConfig(interactions=str(tiny_raw[0]), catalog=str(tiny_raw[1]), output=str(d / "data"),
                           min_item_interactions=1, cold_items=0.3), log=lambda m: None)

    return built_once(tmp_path_factory, "cold-data", build) / "data"


def grounded_config(data, out, **kw):
    cfg = tiny_sft_config(data, out, **{**dict(item_id="token", objective="sequence", max_steps=3, save_steps=2,
                                               max_batch_tokens=600, layers=2, item_text="grounded",
                                               item_weight_decay=2.0), **kw})
    cfg.prompt.max_history, cfg.prompt.item_facts = 20, []
    return cfg


def test_grounded_rows_are_the_map_of_the_text_plus_a_residual_that_cold_items_never_get(cold_data, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from genrec.data.prepared import load_prepared
    from genrec.model_dir import ModelCard, load_tokenizer
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.train.recipe import train

    out = tmp_path / "m"
    logs = []
    train(grounded_config(cold_data, out), log=logs.append)  # residual_dropout: grounded's default, 0.5
    assert any("item_text=grounded: read" in m and m.endswith("residual dropout 0.5") for m in logs)
    state = load_file(str(out / ModelCard.ITEM_TEXT))
    W, b, r, f = state["map.weight"], state["map.bias"], state["residual"], state["features"]
    card = ModelCard.load(out)
    data = load_prepared(cold_data)
    index = card.item_index()
    assert f.shape == (len(index.item_ids), W.shape[0])
    model = AutoModelForCausalLM.from_pretrained(str(card.merged_path()))
    tok = load_tokenizer(out)
    rows = model.get_input_embeddings().weight[tok.convert_tokens_to_ids(index.new_tokens)]
    # what the model holds is what the module made, every residual whole (none dropped at the save)
    assert torch.allclose(rows, f @ W.t() + b + r, atol=1e-4)
    d = W.shape[0]
    assert not torch.allclose(W, W[0, 0] * torch.eye(d))  # the map trained
    cold = [n for n, i in enumerate(index.item_ids) if i in data.cold_items]
    warm = [n for n, i in enumerate(index.item_ids) if data.training_counts()[i] > 0]
    assert cold and r[cold].abs().max() == 0 and r[warm].abs().sum() > 0
    # the model serves as any other: valid items, a cold one rankable
    rec = Recommender(out)
    row = next(iter(data.split("test")))
    res = rec.recommend([Query(history=row["history"], seen=set(row["history"]))], k=len(index.item_ids) - 50)[0]
    ids = [x.item_id for x in res.items]
    assert set(ids) <= set(data.catalog) and set(ids) & data.cold_items


def test_items_without_training_interactions_are_no_negatives_and_dropped_residuals_leave_the_text_row():
    """The training softmax leaves out items the training part never shows (whatever their text, the loss is the
    same: the map never learns to score a cold item's text low), a target among them is refused, and under
    residual_dropout a dropped item's row is exactly W f + b, the row a new item gets, while eval keeps them all."""
    import torch
    import torch.nn.functional as F

    from genrec.items.grounded import ItemRows, rows_for

    torch.manual_seed(0)
    features = torch.randn(6, 4)
    trained = torch.tensor([True, True, False, True, False, True])
    rows = ItemRows(features, 1.0, trained, residual_dropout=0.5)
    with torch.no_grad():
        rows.residual.normal_()
    hidden, targets = torch.randn(3, 4), torch.tensor([0, 3, 5])
    logits, y = rows.softmax(hidden, targets)
    assert logits.shape == (3, 4) and y.tolist() == [0, 2, 3]
    rows.eval()
    loss = F.cross_entropy(*rows.softmax(hidden, targets))
    rows.features[[2, 4]] = torch.randn(2, 4) * 100  # another text for the cold items: the loss does not move
    assert torch.equal(F.cross_entropy(*rows.softmax(hidden, targets)), loss)
    with pytest.raises(GenrecError, match="a training target is an item the training part never shows"):
        rows.softmax(hidden, torch.tensor([2]))
    full = rows()
    text = rows_for(rows.features, rows.map.weight, rows.map.bias)
    assert torch.allclose(full, text + rows.residual.detach())
    rows.train()
    dropped = [(torch.allclose(r, t) and not torch.allclose(r, f)) for _ in range(20)
               for r, t, f in zip(rows().detach(), text, full.detach())]
    assert 0.3 < sum(dropped) / len(dropped) < 0.7  # about half the residuals dropped, each row all or nothing
    assert all(torch.allclose(r, t) or torch.allclose(r, f) for r, t, f in zip(rows().detach(), text, full))


def test_grounded_resumes_to_the_same_rows(cold_data, tmp_path):
    """A run resumed from its checkpoint-2 (the later files removed, as a kill would leave it) continues W, b and
    the residuals from the checkpoint and ends with what the uninterrupted run ends with."""
    import shutil

    from safetensors.torch import load_file

    from genrec.model_dir import ModelCard
    from genrec.train.recipe import train

    full, cut = tmp_path / "full", tmp_path / "cut"
    train(grounded_config(cold_data, full, max_steps=4, residual_dropout=0.5), log=lambda m: None)
    assert (full / "checkpoint-2" / ModelCard.ITEM_TEXT).is_file()
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoint-4")
    for name in ("genrec.json", ModelCard.ITEM_TEXT, "code_embeddings.safetensors"):
        (cut / name).unlink()
    train(grounded_config(cold_data, cut, max_steps=4, resume=True, residual_dropout=0.5), log=lambda m: None)
    a, b = load_file(str(full / ModelCard.ITEM_TEXT)), load_file(str(cut / ModelCard.ITEM_TEXT))
    for k in ("map.weight", "map.bias", "residual"):
        assert (a[k] - b[k]).abs().max() < 1e-5, k


@pytest.mark.parametrize("kw, needle", [
    (dict(item_text="text"), "unknown item_text 'text' (init, grounded)"),
    (dict(item_text="grounded", item_id="title", item_weight_decay=0.0), "item_text=grounded builds item-token rows"),
    (dict(item_text="grounded", item_id="token", objective="prefix"), "item_text=grounded builds item-token rows"),
    (dict(item_text="init", item_id="token", objective="sequence", residual_dropout=0.5),
     "residual_dropout must be in [0, 1) and applies to item_text=grounded, got 0.5"),
    (dict(item_text="grounded", item_id="token", objective="sequence", residual_dropout=1.0),
     "residual_dropout must be in [0, 1) and applies to item_text=grounded, got 1.0"),
])
def test_grounded_bad_settings_are_one_line_errors(tiny_data, tmp_path, kw, needle):
    from genrec.train.recipe import train

    import re

    with pytest.raises(GenrecError, match=re.escape(needle)):
        train(tiny_sft_config(tiny_data, tmp_path / "m", **kw), log=lambda m: None)
    assert not (tmp_path / "m" / "genrec.json").exists()


def test_grounded_without_item_text_says_so_and_keeps_todays_rows(tmp_path):
    from genrec.config import DataConfig
    from genrec.data.prepare import prepare
    from genrec.train.recipe import train

    inter, cat = tmp_path / "i.csv", tmp_path / "c.csv"
    inter.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},i{(u + t) % 7},{t}\n" for u in range(6)
                                                             for t in range(6)))
    cat.write_text("item_id\n" + "".join(f"i{i}\n" for i in range(7)))
    prepare(DataConfig(interactions=str(inter), catalog=str(cat), output=str(tmp_path / "d"), title_col="none",
                       min_item_interactions=1), log=lambda m: None)
    logs = []
    train(grounded_config(tmp_path / "d", tmp_path / "m", max_steps=1), log=logs.append)
    assert any("this catalog has no item text" in m and "item_text=init's" in m for m in logs)
    from genrec.model_dir import ModelCard

    assert (tmp_path / "m" / "genrec.json").is_file() and not (tmp_path / "m" / ModelCard.ITEM_TEXT).exists()


@pytest.fixture(scope="module")
def grounded_model(tmp_path_factory, cold_data):
    from genrec.train.recipe import train

    return built_once(tmp_path_factory, "grounded", lambda d: train(grounded_config(cold_data, d / "m"),
                                                                    log=lambda m: None)) / "m"


def _snapshot(d):
    import hashlib

    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def test_catalog_add_gives_new_items_rows_from_their_text_and_every_command_recommends_them(grounded_model,
                                                                                           tmp_path):
    import json
    import shutil

    import torch
    from click.testing import CliRunner
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from genrec.cli import main
    from genrec.items.grounded import text_features
    from genrec.model_dir import ModelCard, keep_layers, load_base, load_tokenizer
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender

    model = tmp_path / "m"
    shutil.copytree(grounded_model, model)
    before = _snapshot(model)
    n = len(ModelCard.load(model).item_index().item_ids)
    from genrec.data.prepared import load_prepared

    data = load_prepared(ModelCard.load(model).data)
    cold = sorted(data.cold_items)[0]  # a new item with a cold item's text gets the row training gave that item
    twin = {"item_id": "new-3", "title": data.catalog[cold]["title"], **data.catalog[cold]["attrs"]}
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps(r) + "\n" for r in [
        {"item_id": "new-1", "title": "Toy Story 5 (2031)", "genres": "Animation|Children"},
        {"item_id": "new-2", "title": "Alien: Deep Space (2030)", "genres": "Horror|Sci-Fi", "unused": "x"}, twin]))
    res = CliRunner().invoke(main, ["catalog", "add", "--model", str(model), "--catalog", str(new)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1]) == {"added": 3, "items": n + 3, "rows": "grounded"}
    card = ModelCard.load(model)
    index = card.item_index()
    assert index.item_ids[-3:] == ["new-1", "new-2", "new-3"] and card.stats["catalog_added"] == 3
    assert [r["item_id"] for r in card.catalog_rows()][-3:] == ["new-1", "new-2", "new-3"]
    assert not list(tmp_path.glob(".m.*"))  # no stage left behind
    # each new row is W f + b, f the base model's reading of the text (as training read its items)
    state = load_file(str(model / ModelCard.ITEM_TEXT))
    assert state["features"].shape[0] == n + 3 and state["residual"][-3:].abs().max() == 0
    tok = load_tokenizer(model)
    base, _ = load_base(card.base_path(), "float32")
    keep_layers(base, card.sft["layers"])
    from genrec.items.text import item_text

    f = text_features(base, tok, [item_text(r) for r in card.catalog_rows()[-3:]])
    merged = AutoModelForCausalLM.from_pretrained(str(card.merged_path()))
    emb = merged.get_input_embeddings().weight
    rows = emb[tok.convert_tokens_to_ids(index.new_tokens[-3:])]
    assert torch.allclose(rows, f @ state["map.weight"].t() + state["map.bias"], atol=1e-4)
    cold_row = emb[tok.convert_tokens_to_ids(index.new_tokens[index.item_ids.index(cold)])]
    assert torch.allclose(rows[2], cold_row, atol=1e-4)
    # generate (the Recommender) ranks them among the others: the whole catalog includes both
    rec = Recommender(model)
    res = rec.recommend([Query(history=[index.item_ids[0]], seen={index.item_ids[0]})], k=n + 2)[0]
    ids = [r.item_id for r in res.items]
    assert {"new-1", "new-2", "new-3"} <= set(ids) and len(ids) == n + 2
    # the old files outside what changed are untouched byte for byte (hard links were replaced, never rewritten)
    assert all(_snapshot(grounded_model)[k] == v for k, v in before.items())


@pytest.mark.parametrize("lines, needle", [
    (['{"item_id": "a1", "title": "A"}', '{"item_id": "a1", "title": "B"}'], "item 'a1' appears twice"),
    (['{"item_id": "a2", "title": ""}'], "item 'a2' has no title"),
    (['{"item_id": "EXISTING", "title": "X"}'], "is already in the model's catalog"),
    (['{"item_id": "a3", "title": "A"', ''], "could not be parsed"),
    (['{"title": "no id"}'], "has no item column"),
])
def test_catalog_add_bad_input_changes_nothing(grounded_model, tmp_path, lines, needle):
    import shutil

    from click.testing import CliRunner

    from genrec.cli import main
    from genrec.model_dir import ModelCard

    model = tmp_path / "m"
    shutil.copytree(grounded_model, model)
    existing = ModelCard.load(model).item_index().item_ids[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(line.replace("EXISTING", existing) for line in lines) + "\n")
    before = _snapshot(model)
    res = CliRunner().invoke(main, ["catalog", "add", "--model", str(model), "--catalog", str(bad)])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert _snapshot(model) == before and not list(tmp_path.glob(".m.*"))


def test_catalog_add_on_an_init_model_starts_new_rows_from_their_titles(cut_token_model, tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from genrec.cli import main
    from genrec.model_dir import ModelCard
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender

    model = tmp_path / "m"
    shutil.copytree(cut_token_model, model)
    n = len(ModelCard.load(model).item_index().item_ids)
    new = tmp_path / "new.csv"
    new.write_text("movieId,title\nz1,Brand New Film (2031)\n")
    res = CliRunner().invoke(main, ["catalog", "add", "--model", str(model), "--catalog", str(new)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1]) == {"added": 1, "items": n + 1, "rows": "init"}
    rec = Recommender(model)
    first = rec.index.item_ids[0]
    ids = [r.item_id for r in rec.recommend([Query(history=[first], seen={first})], k=n)[0].items]
    assert "z1" in ids and len(set(ids)) == n
    again = CliRunner().invoke(main, ["catalog", "add", "--model", str(model), "--catalog", str(new)])
    assert again.exit_code == 2 and "item 'z1' is already in the model's catalog" in again.output


def test_a_training_forward_computes_the_grounded_rows_once_for_input_items_and_text():
    """The item rows of one training step (input hook, item softmax, text positions) come from one evaluation
    with one residual-dropout draw, kept for that step alone; the loss equals the one computed from those rows
    written into the embedding matrix, and the next forward draws afresh."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from genrec.items.grounded import ItemRows, attach
    from genrec.train.losses import item_softmax_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    span = range(30, 40)
    rows = ItemRows(torch.randn(10, 16), 1.0, residual_dropout=0.5)
    with torch.no_grad():
        rows.residual.normal_()
    model.add_module("genrec_item_rows", rows)
    attach(model, rows, span)
    calls = []
    rows.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.tensor([[1, 31, 33, 35, 5, 6, 2], [1, 32, 34, 36, 7, 8, 2]])  # items, then a reason's text
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    model.train()
    loss = item_softmax_loss(model, inputs, span, item_matrix=rows)
    assert len(calls) == 1 and rows.current is not None and rows._current is None
    loss.backward()
    assert rows.residual.grad is not None and rows.map.weight.grad is not None

    torch.manual_seed(1)
    loss = item_softmax_loss(model, inputs, span, item_matrix=rows)
    torch.manual_seed(1)
    drawn = rows().detach()  # the same draw: the rows that step used
    with torch.no_grad():  # embedded by hand: the input hook, and so no further draw, is not run
        model.get_input_embeddings().weight[30:40] = drawn
        embeds = model.get_input_embeddings().weight[ids]
        hidden = model.model(inputs_embeds=embeds).last_hidden_state[:, :-1].reshape(-1, 16)
    y = ids[:, 1:].reshape(-1)
    item = y >= 30
    direct = (F.cross_entropy(hidden[item] @ drawn.t(), y[item] - 30, reduction="sum") +
              F.cross_entropy(hidden[~item] @ model.get_input_embeddings().weight.t(), y[~item],
                              reduction="sum")) / len(y)
    assert len(calls) == 3 and torch.isclose(loss, direct, atol=1e-5)


def test_catalog_text_embeddings_are_read_once_per_catalog(tmp_path, monkeypatch):
    """A catalog's MiniLM rows are kept in genrec's cache under the hash of its texts: the next call with the same
    texts reads them (what is on disk is returned), other texts are computed, and a damaged file is replaced."""
    import numpy as np

    from genrec.items.text import catalog_embeddings, text_embeddings

    monkeypatch.setenv("GENREC_CACHE", str(tmp_path))
    texts = ["Alien (1979). genres: Horror, Sci-Fi", "Toy Story (1995). genres: Animation", "Heat (1995)"]
    first = catalog_embeddings(texts)
    assert np.allclose(first, text_embeddings(texts), atol=1e-6)
    (kept,) = (tmp_path / "item-text").iterdir()
    np.save(kept, first[::-1].copy())
    assert np.array_equal(catalog_embeddings(texts), first[::-1])  # read back, not computed
    assert np.allclose(catalog_embeddings(texts[:2]), first[:2], atol=1e-6)  # another catalog: its own file
    kept.write_bytes(b"damaged")
    assert np.allclose(catalog_embeddings(texts), first, atol=1e-6)
    assert np.allclose(np.load(kept), first, atol=1e-6)
