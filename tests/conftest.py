"""Shared fixtures: a tiny real dataset cut from the embedded MovieLens sample, the real default model, and one
real fine-tuned tiny model reused by the generation/evaluation/serving tests."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GENREC_CACHE", str(Path.home() / ".cache" / "genrec"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from genrec.config import SAMPLE_DIR, DataConfig, SFTConfig, PromptConfig  # noqa: E402

TINY_USERS = 30
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip a test whose dependency is missing on a developer's machine; in CI (CI=true) the same is a failure,
    so a suite that cannot run a behaviour never passes by skipping it."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing in CI: scripts/test.sh installs it", pytrace=False)
    pytest.skip(f"needs {what} (scripts/test.sh installs it)")

TINY_PER_USER = 25


def write_tiny_raw(dst: Path) -> tuple[Path, Path]:
    """The most recent TINY_PER_USER ratings of the first TINY_USERS users, and their movies (real rows)."""
    dst.mkdir(parents=True, exist_ok=True)
    with gzip.open(SAMPLE_DIR / "ratings.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        header, *lines = fh.read().splitlines()
    by_user: dict[str, list[str]] = {}
    for line in lines:
        user = line.split(",", 1)[0]
        if user in by_user or len(by_user) < TINY_USERS:
            by_user.setdefault(user, []).append(line)
    keep = []
    for rows in by_user.values():
        keep += sorted(rows, key=lambda r: int(r.rsplit(",", 1)[1]))[-TINY_PER_USER:]
    items = {r.split(",")[1] for r in keep}
    (dst / "ratings.csv").write_text("\n".join([header] + keep) + "\n", encoding="utf-8")
    import csv

    with gzip.open(SAMPLE_DIR / "movies.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        movies = [r for r in csv.reader(fh)]
    with open(dst / "movies.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(movies[0])
        w.writerows(r for r in movies[1:] if r[0] in items)
    return dst / "ratings.csv", dst / "movies.csv"


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_raw(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_raw) -> Path:
    from genrec.data import prepare

    out = tmp_path_factory.mktemp("prep") / "data"
    prepare(DataConfig(interactions=str(tiny_raw[0]), catalog=str(tiny_raw[1]), output=str(out),
                       min_item_interactions=1, min_user_interactions=5), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    from genrec.models import resolve_base_model

    return resolve_base_model("default")


@pytest.fixture(scope="session")
def tokenizer(base_model_dir):
    from genrec.models import load_tokenizer

    return load_tokenizer(base_model_dir)


def tiny_sft_config(data: Path, out: Path, **kw) -> SFTConfig:
    cfg = SFTConfig(data=str(data), output=str(out), batch_size=4, max_steps=6, save_steps=3, logging_steps=1,
                    learning_rate=3e-3, lora_r=8, lora_alpha=16, lora_dropout=0.0, seed=7, objective="prefix",
                    prompt=PromptConfig(max_history=3, max_prompt_tokens=128))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_data, base_model_dir) -> Path:
    """A real 6-step LoRA fine-tune of the default model on the tiny data (uninterrupted reference run)."""
    from genrec.training import train

    out = tmp_path_factory.mktemp("model") / "m"
    train(tiny_sft_config(tiny_data, out), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def recommender(tiny_model):
    from genrec.recommender import Recommender

    return Recommender(tiny_model)


@pytest.fixture(scope="session")
def semantic_model(tmp_path_factory, tiny_data, base_model_dir) -> Path:
    """A real 3-step fine-tune that writes semantic codes (new tokens), with alignment examples."""
    from genrec.training import train

    out = tmp_path_factory.mktemp("semantic") / "m"
    train(tiny_sft_config(tiny_data, out, item_id="semantic", max_steps=3, save_steps=100, semantic_codebook=8,
                          align_examples=0.25), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def cut_token_model(tmp_path_factory, tiny_data, base_model_dir) -> Path:
    """A real 2-step sequence fine-tune over item tokens on the base model's first 2 decoder layers (`layers=2`),
    checkpointed by the clock after each step (`save_minutes`)."""
    from genrec.training import train

    out = tmp_path_factory.mktemp("cut") / "m"
    cfg = tiny_sft_config(tiny_data, out, item_id="token", objective="sequence", max_steps=2, save_steps=100,
                          max_batch_tokens=600, layers=2, save_minutes=1e-4, keep_checkpoints=3)
    cfg.prompt.max_history, cfg.prompt.item_facts = 20, []
    train(cfg, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def rerank_model(tmp_path_factory, tiny_data, base_model_dir) -> Path:
    """A real 3-step fine-tune of the rerank task, its SASRec retriever trained (briefly) and saved inside it."""
    from genrec.training import train

    out = tmp_path_factory.mktemp("rerank") / "m"
    cfg = tiny_sft_config(tiny_data, out, max_steps=3, save_steps=100, retriever_seconds=20.0)
    cfg.prompt = PromptConfig(task="rerank", max_history=3, max_prompt_tokens=128, rerank_candidates=8)
    train(cfg, log=lambda m: None)
    return out


TASKS = ["next_item", "preference", "rating", "request"]


@pytest.fixture(scope="session")
def mixed_model(tiny_data, tmp_path_factory):
    """One real 4-step fine-tune mixing four tasks (request text reaches its prompts)."""
    from genrec.training import train

    out = tmp_path_factory.mktemp("mixed") / "m"
    cfg = tiny_sft_config(tiny_data, out, max_steps=4, save_steps=100, tasks=TASKS)
    cfg.prompt = PromptConfig(max_history=3, max_prompt_tokens=200)
    train(cfg, log=lambda m: None)
    return out
