"""Text-grounded item tokens (item_text=grounded) for real: the rows a model saves are W f + b + r, an item without
training interactions keeps r = 0 (its row from its text alone), and the saved model serves as an ordinary one."""

from __future__ import annotations

import pytest

from conftest import built_once, tiny_sft_config
from genrec.errors import GenrecError


@pytest.fixture(scope="module")
def cold_data(tmp_path_factory, tiny_raw):
    from genrec.config import DataConfig
    from genrec.data import prepare

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

    from genrec.data import load_prepared
    from genrec.grounded import FILE
    from genrec.models import ModelCard, load_tokenizer
    from genrec.recommender import Query, Recommender
    from genrec.training import train

    out = tmp_path / "m"
    logs = []
    train(grounded_config(cold_data, out), log=logs.append)
    assert any("item_text=grounded: read" in m for m in logs)
    state = load_file(str(out / FILE))
    W, b, r, f = state["map.weight"], state["map.bias"], state["residual"], state["features"]
    card = ModelCard.load(out)
    data = load_prepared(cold_data)
    index = card.item_index()
    assert f.shape == (len(index.item_ids), W.shape[0])
    model = AutoModelForCausalLM.from_pretrained(str(card.merged_path()))
    tok = load_tokenizer(out)
    rows = model.get_input_embeddings().weight[tok.convert_tokens_to_ids(index.new_tokens)]
    assert torch.allclose(rows, f @ W.t() + b + r, atol=1e-4)  # what the model holds is what the module made
    d = W.shape[0]
    assert not torch.allclose(W, W[0, 0] * torch.eye(d))  # the map trained
    cold = [n for n, i in enumerate(index.item_ids) if i in data.cold_items]
    warm = [n for n, i in enumerate(index.item_ids) if data.training_counts()[i] > 0]
    assert cold and r[cold].abs().max() == 0 and r[warm].abs().sum() > 0
    # the model serves as any other: valid items, a cold one rankable
    rec = Recommender(out)
    row = next(iter(data.split("test")))
    res = rec.recommend([Query(history=row["history"], seen=set(row["history"]))], k=len(index.item_ids) - 50)[0]
    ids = [x["item_id"] for x in res["recommendations"]]
    assert set(ids) <= set(data.catalog) and set(ids) & data.cold_items


def test_grounded_resumes_to_the_same_rows(cold_data, tmp_path):
    """A run resumed from its checkpoint-2 (the later files removed, as a kill would leave it) continues W, b and
    the residuals from the checkpoint and ends with what the uninterrupted run ends with."""
    import shutil

    from safetensors.torch import load_file

    from genrec.grounded import FILE
    from genrec.training import train

    full, cut = tmp_path / "full", tmp_path / "cut"
    train(grounded_config(cold_data, full, max_steps=4), log=lambda m: None)
    assert (full / "checkpoint-2" / FILE).is_file()
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoint-4")
    for name in ("genrec.json", FILE, "code_embeddings.safetensors"):
        (cut / name).unlink()
    train(grounded_config(cold_data, cut, max_steps=4, resume=True), log=lambda m: None)
    a, b = load_file(str(full / FILE)), load_file(str(cut / FILE))
    for k in ("map.weight", "map.bias", "residual"):
        assert (a[k] - b[k]).abs().max() < 1e-5, k


@pytest.mark.parametrize("kw, needle", [
    (dict(item_text="text"), "unknown item_text 'text' (init, grounded)"),
    (dict(item_text="grounded", item_id="title", item_weight_decay=0.0), "item_text=grounded builds item-token rows"),
    (dict(item_text="grounded", item_id="token", objective="prefix"), "item_text=grounded builds item-token rows"),
])
def test_grounded_bad_settings_are_one_line_errors(tiny_data, tmp_path, kw, needle):
    from genrec.training import train

    with pytest.raises(GenrecError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        train(tiny_sft_config(tiny_data, tmp_path / "m", **kw), log=lambda m: None)
    assert not (tmp_path / "m" / "genrec.json").exists()


def test_grounded_needs_item_text(tmp_path):
    from genrec.config import DataConfig
    from genrec.data import prepare
    from genrec.training import train

    inter, cat = tmp_path / "i.csv", tmp_path / "c.csv"
    inter.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},i{(u + t) % 7},{t}\n" for u in range(6)
                                                             for t in range(6)))
    cat.write_text("item_id\n" + "".join(f"i{i}\n" for i in range(7)))
    prepare(DataConfig(interactions=str(inter), catalog=str(cat), output=str(tmp_path / "d"), title_col="none",
                       min_item_interactions=1), log=lambda m: None)
    with pytest.raises(GenrecError, match="item_text=grounded reads item text, and this catalog has none"):
        train(grounded_config(tmp_path / "d", tmp_path / "m", item_weight_decay=0.0), log=lambda m: None)
