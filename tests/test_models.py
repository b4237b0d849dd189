"""GGUF -> safetensors conversion of the real packaged default model, and model path errors."""

from __future__ import annotations

import time

import pytest

from genrec.errors import GenrecError
from genrec.models import convert_default_model, load_base, resolve_base_model


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
