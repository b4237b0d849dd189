"""GGUF -> safetensors conversion of the real packaged default model, and model path errors."""

from __future__ import annotations

import time

import pytest

from genrec.errors import GenrecError
from genrec.model_dir import convert_default_model, load_base, resolve_base_model


def test_conversion_is_atomic_and_loads_fast(tmp_path):
    target = tmp_path / "models" / "smol"
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"half-written junk")  # a broken leftover is replaced
    out = convert_default_model(target, log=lambda m: None)
    assert out == target
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in target.iterdir()}
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    t0 = time.time()
    model, tok = load_base(target)
    assert time.time() - t0 < 15
    assert str(model.dtype) == "torch.float32"
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    # The second call reuses the cache.
    t0 = time.time()
    assert convert_default_model(target, log=lambda m: None) == target
    assert time.time() - t0 < 1


def test_missing_and_invalid_model_paths(tmp_path):
    with pytest.raises(GenrecError, match="does not exist"):
        resolve_base_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenrecError, match="no config.json"):
        resolve_base_model(str(tmp_path / "empty"))


def test_any_local_model_directory_works(base_model_dir):
    assert resolve_base_model(str(base_model_dir)) == base_model_dir


def test_model_card_round_trip_and_bad_directories(tmp_path):
    """The card is one flat JSON object on disk (what the benchmarks and users read) and the same typed card back;
    an unfinished run, a plain directory and a card without its fields are one-line errors."""
    import json

    from genrec.model_dir import ModelCard

    prompt = {"task": "next_item", "template": "template.j2", "max_history": 20}
    card = ModelCard(dir=tmp_path, base_model="default", data="/d", prompt=prompt, tasks={"next_item": prompt},
                     merged="merged", sft={"lora_r": 8}, stats={"global_step": 7, "train_seconds": 1.5})
    card.save()
    raw = json.loads((tmp_path / "genrec.json").read_text())
    assert raw["global_step"] == 7 and raw["prompt"] == prompt and raw["genrec_model"] == 1 and "stats" not in raw
    back = ModelCard.load(tmp_path)
    assert back == card and back.lora_rank == 8 and back.merged_path() == tmp_path / "merged"
    assert back.task_prompts()["next_item"]["template"] == str(tmp_path / "template.j2")
    with pytest.raises(GenrecError, match="not a LoRA checkpoint"):
        back.adapter_path(tmp_path / "checkpoint-3")  # no adapter_config.json there
    (tmp_path / "run" / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(GenrecError, match="unfinished training run"):
        ModelCard.load(tmp_path / "run")
    with pytest.raises(GenrecError, match="not a genrec model directory"):
        ModelCard.load(tmp_path / "run" / "checkpoint-5")
    (tmp_path / "genrec.json").write_text('{"base_model": "default"}')
    with pytest.raises(GenrecError, match="not a genrec model card"):
        ModelCard.load(tmp_path)
