"""Your own model: "any local transformers model directory works", tested on architectures other than the default
(SmolLM2: Llama, tied embeddings). Each is a tiny random model built here from its config (no download), saved as a
local directory with the default tokenizer, then taken through sft -> generate -> serve with item tokens and with
titles, as a user with a model they downloaded themselves would."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import built_once
from genrec.cli import main

ARCHITECTURES = {
    # untied input and output embeddings, grouped-query attention
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    # another block layout (parallel attention and MLP, rotary on part of each head), its own layer names
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(tie_word_embeddings=False, rotary_pct=0.5)),
}


def local_model(tmp_path_factory, base_model_dir, arch: str):
    """A tiny random `arch` model directory (config, safetensors, the default tokenizer), as a user's own."""
    def build(d):
        import torch
        import transformers

        from genrec.model_dir import load_tokenizer

        config_cls, model_cls, extra = ARCHITECTURES[arch]
        tok = load_tokenizer(base_model_dir)
        cfg = getattr(transformers, config_cls)(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, **extra)
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(cfg)
        (d / "model").mkdir()
        model.save_pretrained(d / "model")
        tok.save_pretrained(d / "model")

    return built_once(tmp_path_factory, f"arch-{arch}", build) / "model"


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("item_id", ["token", "title"])
def test_sft_generate_serve_on_another_architecture(arch, item_id, tmp_path, tmp_path_factory, base_model_dir,
                                                     tiny_data):
    from openai import OpenAI

    from genrec.data.prepared import load_prepared
    from genrec.infer.recommender import Recommender
    from servers import start_server

    base = local_model(tmp_path_factory, base_model_dir, arch)
    out = tmp_path / "m"
    # the library's defaults (layers=10 keeps a 2-layer model whole), a short run
    args = ["sft", "--data", str(tiny_data), "--output", str(out), "--model", str(base), "--item-id", item_id,
            "max_steps=3", "max_minutes=none", "save_steps=2", "logging_steps=1", "prompt.max_history=5"]
    if item_id == "title":
        args += ["objective=prefix", "batch_size=4", "item_weight_decay=0", "prompt.max_prompt_tokens=160"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    card = json.loads((out / "genrec.json").read_text())
    assert card["global_step"] == 3 and card["base_model"] == str(base.resolve())

    data = load_prepared(tiny_data)
    uid = next(iter(data.users))
    users = tmp_path / "users.jsonl"
    users.write_text(json.dumps({"user_id": uid}) + "\n" + json.dumps({"history": data.users[uid]["items"][:2]}) + "\n")
    recs = tmp_path / "recs.jsonl"
    res = CliRunner().invoke(main, ["generate", "--model", str(out), "--users", str(users), "--out", str(recs),
                                    "--k", "4"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in recs.read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        ids = [r["item_id"] for r in line["recommendations"]]
        assert len(ids) == 4 == len(set(ids)) and set(ids) <= set(data.catalog)
    assert not set(r["item_id"] for r in lines[0]["recommendations"]) & set(data.users[uid]["items"])

    rec = Recommender(out)
    assert type(rec.backend.model).__name__ == ARCHITECTURES[arch][1]
    server, thread, url = start_server(rec)
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        resp = client.chat.completions.create(model="genrec-test", n=4, messages=[
            {"role": "user", "content": json.dumps({"user_id": uid})}])
        said = [c.message.content.split("\n") for c in resp.choices]  # item tokens: each title, then its reason
        assert [x[0] for x in said] == [r["title"] for r in lines[0]["recommendations"]]
        assert all(x[1:] == ([] if item_id == "title" else [x[1]]) for x in said)
        assert all(x[1].startswith("Because of ") for x in said if item_id != "title")
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_untied_output_matrix_gets_the_title_shaped_item_rows_too(tmp_path_factory, base_model_dir, tiny_data):
    import torch
    from transformers import AutoModelForCausalLM

    from genrec.config import SFTConfig
    from genrec.data.prepared import load_prepared
    from genrec.model_dir import load_tokenizer
    from genrec.items.grounded import ITEM_ROW_SCALE, item_rows_from_titles
    from genrec.train.examples import build_index

    base = local_model(tmp_path_factory, base_model_dir, "qwen2")
    model, tok = AutoModelForCausalLM.from_pretrained(str(base)), load_tokenizer(base)
    data = load_prepared(tiny_data)
    index = build_index(data, SFTConfig(data=str(tiny_data)), log=lambda m: None)
    tok.add_tokens(index.new_tokens)  # as training adds them
    model.resize_token_embeddings(len(tok))
    item_rows_from_titles(model, tok, index, data.catalog)
    inp, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert inp.data_ptr() != out.data_ptr()
    row = tok.convert_tokens_to_ids(index.new_tokens[0])
    ids = tok(" " + data.catalog[index.item_ids[0]]["title"], add_special_tokens=False)["input_ids"]
    for w in (inp, out):  # each matrix's row is its own mean of the title's rows, at its own scale
        v = w[ids].mean(0)
        want = v * ITEM_ROW_SCALE * w[:row].norm(dim=1).mean() / v.norm()
        assert torch.allclose(w[row], want, atol=1e-5)
    assert not torch.allclose(inp[row], out[row])
