"""Item identifiers: random-permutation ids and semantic codes (real MiniLM text encoder, real co-occurrence)."""

from __future__ import annotations

import json
import random

import pytest

from genrec.data.prepared import load_prepared
from genrec.infer.constrained import TokenTrie
from genrec.items.index import ItemIndex


@pytest.fixture(scope="module")
def data(tiny_data):
    return load_prepared(tiny_data)


def histories(data):
    return [u["items"][:-2] for u in data.users.values()]


def test_id_style_is_a_seeded_permutation_not_catalog_order(data):
    cat = list(data.catalog.values())
    a = ItemIndex.build(cat, "id", seed=1)
    assert a.targets == ItemIndex.build(cat, "id", seed=1).targets  # deterministic
    assert a.targets != ItemIndex.build(cat, "id", seed=2).targets
    assert len(set(a.targets)) == len(cat) and len({len(t) for t in a.targets}) == 1  # unique, fixed width
    numbers = [int(t) for t in a.targets]
    assert sorted(numbers) == list(range(len(cat)))
    # no leak through numbering: consecutive catalog items are not consecutive ids
    assert sum(1 for x, y in zip(numbers, numbers[1:]) if y == x + 1) < len(cat) // 10


@pytest.fixture(scope="module")
def semantic(data):
    return ItemIndex.build(list(data.catalog.values()), "semantic", histories(data), seed=3, codebook=8)


def test_semantic_codes_unique_deterministic_and_round_trip(data, semantic):
    cat = list(data.catalog.values())
    assert len(set(semantic.targets)) == len(cat)
    again = ItemIndex.build(cat, "semantic", histories(data), seed=3, codebook=8)
    assert again.targets == semantic.targets
    for item, target in zip(semantic.item_ids, semantic.targets):
        assert target.startswith("<a_") and "<b_" in target and "<c_" in target
        assert semantic.item_of(target) == item
        assert set(t + ">" for t in target.split(">")[:-1]) <= set(semantic.new_tokens)
    st = semantic.stats
    assert st["text"] and st["distinct_prefixes"] > len(cat) // 4  # codes spread over the space, not one blob


def test_trie_over_code_tokens(tokenizer, semantic, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    tok.add_tokens(semantic.new_tokens)
    seqs = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in semantic.targets]
    for t, s in zip(semantic.targets, seqs):
        assert len(s) == t.count("<") + 1  # one new token per code level
    trie = TokenTrie(seqs)
    assert len(trie.leaf_item) == len(semantic.targets)
    first = {s[0] for s in seqs}
    assert set(trie.allowed(0)) == first and len(first) <= 8  # level-1 codebook


def test_cold_items_get_codes_from_text_and_text_free_catalogs_collaborative_codes(data):
    cat = list(data.catalog.values())
    twin = dict(cat[0], item_id="cold-twin")  # in the catalog, never in a history
    idx = ItemIndex.build(cat + [twin], "semantic", histories(data), seed=3, codebook=8)
    assert idx.targets[-1] and len(set(idx.targets)) == len(cat) + 1
    no_text = [{"item_id": r["item_id"], "title": r["item_id"], "attrs": {}} for r in cat]
    ids_only = ItemIndex.build(no_text, "semantic", histories(data), has_text=False, seed=3, codebook=8)
    assert not ids_only.stats["text"] and len(set(ids_only.targets)) == len(cat)
    # collaborative-only codes follow co-occurrence: items that never co-occur are not all in one cluster
    assert ids_only.stats["distinct_prefixes"] > 1


def test_index_save_load(semantic, tmp_path):
    semantic.save(tmp_path / "idx.json")
    back = ItemIndex.load(tmp_path / "idx.json")
    assert (back.style, back.targets, back.new_tokens) == ("semantic", semantic.targets, semantic.new_tokens)
    assert json.loads((tmp_path / "idx.json").read_text())["stats"]["levels"] == 3


@pytest.fixture(scope="module")
def id_model(tiny_data, tmp_path_factory):
    from conftest import tiny_sft_config
    from genrec.train.recipe import train

    out = tmp_path_factory.mktemp("idstyle") / "m"
    train(tiny_sft_config(tiny_data, out, item_id="id", max_steps=3, save_steps=100, align_examples=0.25),
          log=lambda m: None)
    return out


@pytest.mark.parametrize("style", ["id", "semantic"])
def test_sft_and_generate_with_item_codes(tiny_data, request, style):
    """A real fine-tune writing codes: only catalog items come out, histories are written as codes."""
    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query

    out = request.getfixturevalue("id_model" if style == "id" else "semantic_model")
    card = json.loads((out / "genrec.json").read_text())
    assert card["id_style"] == style
    if style == "semantic":
        assert card["merged"] == "merged"  # new vocabulary: the merged model is what vLLM serves
    rec = Recommender(out)
    assert rec.index.style == style
    data = load_prepared(tiny_data)
    row = data.split("test")[0]
    prompt = rec.builder.as_text(rec.builder.encode(row["history"]))
    assert rec.index.targets[rec.index.position[row["history"][-1]]] in prompt  # history written as codes
    res = rec.recommend([Query(history=row["history"], seen=set(row["history"]))], k=5)[0].items
    assert len(res) == 5 and all(r.item_id in data.catalog for r in res)
    assert not {r.item_id for r in res} & set(row["history"])


def test_only_code_token_rows_are_trained(semantic_model, base_model_dir):
    """The new rows of the tied embedding moved away from their initialisation; every old row is untouched."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from genrec.model_dir import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(str(semantic_model / "merged"), dtype=torch.float32)
    old = base.get_input_embeddings().weight
    new = merged.get_input_embeddings().weight
    n_old = old.shape[0]
    tok = load_tokenizer(semantic_model)
    assert new.shape[0] == len(tok) > n_old
    assert torch.equal(new[:n_old], old)
    assert merged.get_output_embeddings().weight.data_ptr() == new.data_ptr()  # still tied
    rows = load_file(str(semantic_model / "code_embeddings.safetensors"))["rows_0"]
    assert torch.equal(rows, new[n_old:])
    # trained: rows of codes used in the training targets differ from the mean-resized initialisation
    torch.manual_seed(7)  # tiny_sft_config's seed, as training does before resizing
    base.resize_token_embeddings(len(tok))
    assert not torch.allclose(base.get_input_embeddings().weight[n_old:], new[n_old:])


# ------------------------------------------------------------------------------------------- item_id=token
def test_token_style_one_new_token_per_item(data, tokenizer, tmp_path):
    """Every item is one new vocabulary token (its only target), unique, round-tripping through save/load."""
    from transformers import AutoTokenizer

    cat = list(data.catalog.values())
    idx = ItemIndex.build(cat, "token")
    assert idx.new_tokens == idx.targets and len(set(idx.targets)) == len(cat)
    assert idx.stats["text"] and not ItemIndex.build(cat, "token", has_text=False).stats["text"]  # rows from titles?
    assert all(idx.item_of(t) == i for i, t in zip(idx.item_ids, idx.targets))
    idx.save(tmp_path / "idx.json")
    back = ItemIndex.load(tmp_path / "idx.json")
    assert (back.style, back.targets, back.new_tokens) == ("token", idx.targets, idx.new_tokens)
    tokenizer.save_pretrained(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    tok.add_tokens(idx.new_tokens)
    for t in idx.targets[:20]:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1


def test_token_rows_start_from_their_titles(data, tokenizer, base_model_dir, tmp_path):
    """A new item row is the direction of the mean of its title's token embeddings, at ITEM_ROW_SCALE x the
    vocabulary's mean norm;
    items with different titles get different rows, and no old row changes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec.items.grounded import ITEM_ROW_SCALE, item_rows_from_titles

    idx = ItemIndex.build(list(data.catalog.values()), "token")
    tokenizer.save_pretrained(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    n_old = len(tok)
    tok.add_tokens(idx.new_tokens)
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    before = model.get_input_embeddings().weight[:n_old].detach().clone()
    model.resize_token_embeddings(len(tok))
    item_rows_from_titles(model, tok, idx, data.catalog)
    w = model.get_input_embeddings().weight.detach()
    assert torch.equal(w[:n_old], before)
    norm = before.norm(dim=1).mean()
    for item in idx.item_ids[:5]:
        row = w[tok.convert_tokens_to_ids(idx.targets[idx.position[item]])]
        title_ids = tok(" " + data.catalog[item]["title"], add_special_tokens=False)["input_ids"]
        mean = before[title_ids].mean(0)
        assert torch.nn.functional.cosine_similarity(row, mean, dim=0) > 0.9999
        assert torch.isclose(row.norm(), ITEM_ROW_SCALE * norm, rtol=1e-4)
    rows = w[tok.convert_tokens_to_ids(idx.new_tokens)]
    assert torch.unique(rows, dim=0).shape[0] == len({data.catalog[i]["title"] for i in idx.item_ids})


@pytest.fixture(scope="module")
def token_model(tiny_data, tmp_path_factory):
    from conftest import tiny_sft_config
    from genrec.train.recipe import train

    out = tmp_path_factory.mktemp("tokenstyle") / "m"
    cfg = tiny_sft_config(tiny_data, out, item_id="token", objective="sequence", max_steps=3, save_steps=100,
                          max_batch_tokens=600, label_smoothing=0.1,  # the trainer takes both
                          item_weight_decay=0.1)
    cfg.prompt.max_history, cfg.prompt.item_facts = 20, []  # facts would follow each item token (`after`)
    logs = []
    train(cfg, log=logs.append)
    (out / "test-log.txt").write_text("\n".join(map(str, logs)))
    return out


def loss_inputs(exs: list[dict], pad_id: int) -> dict:
    """A right-padded batch of examples as the trainer's collator gives it: labels only where the mask supervises."""
    import torch

    width = max(len(e["input_ids"]) for e in exs)
    ids = torch.full((len(exs), width), pad_id)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for n, e in enumerate(exs):
        ids[n, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[n, :len(e["input_ids"])] = 1
        labels[n, :len(e["input_ids"])] = torch.where(torch.tensor(e["completion_mask"]) == 1,
                                                      torch.tensor(e["input_ids"]), -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_item_softmax_loss_is_the_catalog_cross_entropy(token_model, tiny_data):
    """Training with item tokens uses the item softmax, and that loss equals the cross-entropy recomputed from a
    direct forward pass's full logits restricted to the item rows (and, given a target count, the sum over it);
    label smoothing e is (1 - e) times that plus e times the mean negative log-probability over the catalog."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from genrec.model_dir import load_tokenizer
    from genrec.infer.recommender import Recommender
    from genrec.train.losses import item_softmax_loss

    assert "loss: the softmax over the" in (token_model / "test-log.txt").read_text()
    tok = load_tokenizer(token_model)
    rec = Recommender(token_model)
    rows = tok.convert_tokens_to_ids(rec.index.new_tokens)
    rows = range(rows[0], rows[-1] + 1)
    model = AutoModelForCausalLM.from_pretrained(str(token_model / "merged"), dtype=torch.float32)
    data = load_prepared(tiny_data)
    exs = [rec.history_prompts.sequence_examples(data.train_items(u))[0] for u in list(data.users.values())[:3]]
    inputs = loss_inputs(exs, tok.pad_token_id)
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    with torch.no_grad():
        loss = item_softmax_loss(model, inputs, rows)
        summed = item_softmax_loss(model, inputs, rows, num_items_in_batch=1)
        smooth = item_softmax_loss(model, inputs, rows, smoothing=0.2)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    keep = labels[:, 1:] != -100
    direct = F.cross_entropy(logits[keep][:, rows.start:rows.stop], labels[:, 1:][keep] - rows.start)
    assert int(keep.sum()) == sum(rec.history_prompts.n_targets(e) for e in exs) > 0
    assert torch.isclose(loss, direct, atol=1e-4) and torch.isclose(summed, direct * keep.sum(), rtol=1e-4)
    uniform = -F.log_softmax(logits[keep][:, rows.start:rows.stop], -1).mean()
    assert not torch.isclose(smooth, loss, atol=1e-3)
    assert torch.isclose(smooth, 0.8 * direct + 0.2 * uniform, atol=1e-4)


def test_the_loss_of_windows_with_reasons_is_items_over_the_catalog_and_text_over_the_vocabulary(token_model,
                                                                                                   tiny_data):
    """prompt.reason_share: a window ending on a reason supervises text after its last item; the loss is then the
    item softmax at item positions plus the whole vocabulary's cross-entropy at text positions, over all targets
    (recomputed here from a direct forward pass's full logits)."""
    import dataclasses

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from genrec.infer.recommender import Recommender
    from genrec.model_dir import load_tokenizer
    from genrec.prompts.builder import load_template
    from genrec.prompts.sequence import make_builder
    from genrec.train.losses import item_softmax_loss

    tok = load_tokenizer(token_model)
    rec = Recommender(token_model)
    cfg = dataclasses.replace(rec.history_prompts.cfg, reason_share=1.0)
    b = make_builder(tok, cfg, rec.catalog, rec.index, load_template(cfg.template))
    assert b.with_reasons
    rows = tok.convert_tokens_to_ids(rec.index.new_tokens)
    rows = range(rows[0], rows[-1] + 1)
    model = AutoModelForCausalLM.from_pretrained(str(token_model / "merged"), dtype=torch.float32)
    data = load_prepared(tiny_data)
    exs = [b.sequence_examples(data.train_items(u), rng=random.Random(0))[-1] for u in list(data.users.values())[:3]]
    inputs = loss_inputs(exs, tok.pad_token_id)
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    with torch.no_grad():
        loss = item_softmax_loss(model, inputs, rows)
        weighted = item_softmax_loss(model, inputs, rows, text_weight=0.25)  # reason_weight=0.25
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    keep = labels[:, 1:] != -100
    y, lg = labels[:, 1:][keep], logits[keep]
    item = (y >= rows.start) & (y < rows.stop)
    assert item.any() and (~item).any() and y[~item].eq(tok.eos_token_id).sum() == 3  # each reason ends on EOS
    items_sum = F.cross_entropy(lg[item][:, rows.start:rows.stop], y[item] - rows.start, reduction="sum")
    text_sum = F.cross_entropy(lg[~item][:, :rows.stop], y[~item], reduction="sum")
    assert torch.isclose(loss, (items_sum + text_sum) / len(y), atol=1e-4)
    assert torch.isclose(weighted, (items_sum + 0.25 * text_sum) / len(y), atol=1e-4)
    items = data.train_items(list(data.users.values())[0])
    assert b.as_text(exs[0]["input_ids"]).endswith(" " + b.reason_text(items[-1], items[:-1]) + tok.eos_token)


def test_token_model_prompt_is_frameless_and_search_is_exact(token_model, tiny_data):
    """A real sequence fine-tune over item tokens: the prompt is the start token, a two-line header and one token
    per history item (no chat frame, no newline); the beam's top-k equals the certified exact top-k (the whole
    catalog is one softmax); only catalog items outside the history come out."""
    from genrec.infer.query import Query, Search
    from genrec.infer.recommender import Recommender

    card = json.loads((token_model / "genrec.json").read_text())
    assert card["id_style"] == "token" and card["merged"] == "merged"
    rec = Recommender(token_model)
    b = rec.history_prompts
    data = load_prepared(tiny_data)
    row = data.split("test")[0]
    hist = list(row["history"])[-10:]
    ids = b.encode(hist)
    assert ids[0] == rec.tok.bos_token_id and "<|im_end|>" not in b.as_text(ids)
    assert len(ids) == len(b._header) + len(hist)  # one token per item, no newline
    assert ids[-len(hist):] == [rec.tok.convert_tokens_to_ids(rec.index.targets[rec.index.position[i]])
                                for i in hist]
    q = [Query(history=hist, seen=set(hist))]
    beam = rec.recommend(q, Search(k=10))[0].items
    exact = rec.recommend(q, Search(k=10, search="exact"))[0].items
    assert [r.item_id for r in beam] == [r.item_id for r in exact]
    assert len(beam) == 10 and all(r.item_id in data.catalog and r.item_id not in hist for r in beam)


def test_chat_frame_setting(tokenizer, data):
    """Titles keep the chat frame by default, item tokens drop it; chat_frame overrides either way."""
    from genrec.config import PromptConfig
    from genrec.prompts.sequence import make_builder

    cat = list(data.catalog.values())
    for style, frame, framed in (("title", None, True), ("token", None, False), ("token", True, True),
                                 ("title", False, False)):
        idx = ItemIndex.build(cat, style)
        b = make_builder(tokenizer, PromptConfig(objective="sequence", chat_frame=frame), data.catalog, idx)
        assert ("<|im_start|>assistant" in b.as_text(b._header)) == framed


def test_layers_cuts_the_decoder_and_the_model_serves_cut(cut_token_model, tiny_data, tmp_path):
    """`layers=N` trains and saves a decoder of the base model's first N layers (merged, its config saying N, no
    tensor of a later layer written); the saved model loads and recommends catalog items; its last checkpoint,
    rebuilt from the base model (cut, embedding grown, LoRA merged), scores exactly as the final model (the
    learning curve of such a model; `save_minutes` checkpoints by the clock); N outside 1..depth is a one-line
    error before any training."""
    from safetensors import safe_open

    from conftest import tiny_sft_config
    from genrec.errors import GenrecError
    from genrec.infer.query import Query, Search
    from genrec.infer.recommender import Recommender
    from genrec.train.recipe import train

    out = cut_token_model
    card = json.loads((out / "genrec.json").read_text())
    assert card["merged"] == "merged" and card["sft"]["layers"] == 2 and card["tokens_seen"] > 0
    assert json.loads((out / "merged" / "config.json").read_text())["num_hidden_layers"] == 2
    with safe_open(str(out / "merged" / "model.safetensors"), "pt") as f:
        layer_ids = {int(k.split(".layers.")[1].split(".")[0]) for k in f.keys() if ".layers." in k}
    assert layer_ids == {0, 1}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # save_minutes
    rec = Recommender(out)
    assert len(rec.backend.model.get_decoder().layers) == 2
    data = load_prepared(tiny_data)
    hist = list(data.split("test")[0]["history"])[-5:]
    recs = rec.recommend([Query(history=hist, seen=set(hist))], Search(k=5))[0].items
    assert len(recs) == 5 and all(r.item_id in data.catalog and r.item_id not in hist for r in recs)
    at_ckpt = Recommender(out, adapter=out / "checkpoint-2")
    assert len(at_ckpt.backend.model.get_decoder().layers) == 2
    again = at_ckpt.recommend([Query(history=hist, seen=set(hist))], Search(k=5))[0].items
    assert [r.item_id for r in again] == [r.item_id for r in recs]
    assert all(abs(a.score - b.score) < 1e-3 for a, b in zip(again, recs))
    with pytest.raises(GenrecError, match="loads with --backend hf only"):
        Recommender(out, backend="vllm", adapter=out / "checkpoint-1")
    for bad in (0, -1):
        with pytest.raises(GenrecError, match=r"layers=-?\d+: give the number of decoder layers to keep \(1\.\.30\)"):
            train(tiny_sft_config(tiny_data, tmp_path / f"bad{bad}", layers=bad), log=lambda m: None)
        assert not (tmp_path / f"bad{bad}" / "genrec.json").exists()


def test_layers_is_an_upper_bound_so_the_default_leaves_a_shallow_model_whole():
    from transformers import LlamaConfig, LlamaForCausalLM

    from genrec.model_dir import keep_layers

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=2))
    keep_layers(model, 10)  # SFTConfig's default on a 3-layer model
    assert len(model.get_decoder().layers) == 3 and model.config.num_hidden_layers == 3
    keep_layers(model, 2)
    assert len(model.get_decoder().layers) == 2 and model.config.num_hidden_layers == 2


def test_identifier_styles_are_their_rules():
    """What each style writes and what the rest of genrec asks of it come from one class: a token is one new
    vocabulary token per item, titles are words any catalog can be searched by, ids and codes are neither."""
    from genrec.errors import GenrecError
    from genrec.items.index import ID_STYLE, ID_STYLES, ItemIndex, id_style

    catalog = [{"item_id": str(n), "title": t, "attrs": {}} for n, t in enumerate(["A", "B", "A", "C"])]
    built = {s: ItemIndex.build(catalog, s, histories=[["0", "1", "3"]], has_text=False, codebook=2)
             for s in ("title", "id", "token")}
    assert built["token"].new_tokens == built["token"].targets and built["token"].rules.one_token
    assert built["title"].targets == ["A", "B", "A [2]", "C"] and built["title"].rules.writes_words
    assert not built["title"].new_tokens and not built["id"].rules.writes_words
    assert sorted(len(t) for t in built["id"].targets) == [1] * 4
    assert [s for s in ID_STYLES if ID_STYLE[s].one_token] == ["token"]
    assert [s for s in ID_STYLES if ID_STYLE[s].new_vocabulary] == ["semantic", "token"]
    with pytest.raises(GenrecError, match="unknown item identifier style 'words'"):
        id_style("words")
