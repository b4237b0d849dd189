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
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (and per subprocess it starts): on 2 cores, two workers of 2 OpenMP threads each spin
    # against each other and run slower than one worker alone
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from genrec.config import SAMPLE_DIR, DataConfig, SFTConfig, PromptConfig# noqa: E402

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


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The directory of a session fixture's artefact, built once per test run: under pytest-xdist its workers share
    the parent of their temp dirs, so the first worker to ask builds it there under a file lock and the others
    wait and reuse it (a model trained twice would cost the suite minutes). `build(dir)` fills the directory."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(parents=True, exist_ok=True)
    out, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(out, ignore_errors=True)  # a build that failed half-way
            out.mkdir()
            build(out)
            done.write_text("")
    return out


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> tuple[Path, Path]:
    raw = built_once(tmp_path_factory, "raw", write_tiny_raw)
    return raw / "ratings.csv", raw / "movies.csv"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_raw) -> Path:
    from genrec.data.prepare import prepare

    return built_once(tmp_path_factory, "prep", lambda d: prepare(DataConfig(
        interactions=str(tiny_raw[0]), catalog=str(tiny_raw[1]), output=str(d / "data"), min_item_interactions=1,
        min_user_interactions=5), log=lambda m: None)) / "data"


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    from genrec.model_dir import resolve_base_model

    return resolve_base_model("default")


@pytest.fixture(scope="session")
def tokenizer(base_model_dir):
    from genrec.model_dir import load_tokenizer

    return load_tokenizer(base_model_dir)


# the tests' base recipe on the command line (titles on the whole model for a step count), as tiny_sft_config sets it
TITLE_RECIPE = ["item_id=title", "layers=none", "max_minutes=none", "num_epochs=1", "embedding_dropout=0",
                "item_weight_decay=0"]


def tiny_sft_config(data: Path, out: Path, **kw) -> SFTConfig:
    cfg = SFTConfig(data=str(data), output=str(out), batch_size=4, max_steps=6, save_steps=3, logging_steps=1,
                    learning_rate=3e-3, lora_r=8, lora_alpha=16, lora_dropout=0.0, seed=7, objective="prefix",
                    prompt=PromptConfig(max_history=3, max_prompt_tokens=128),
                    # the tests' base recipe: titles on the whole model for a step count (not the library's defaults)
                    item_id="title", layers=None, max_minutes=None, num_epochs=1.0, embedding_dropout=0.0,
                    item_weight_decay=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def trained(tmp_path_factory, name: str, config) -> Path:
    """A real fine-tune of `config(output_dir)`, trained once per test run (`built_once`)."""
    from genrec.train.recipe import train

    return built_once(tmp_path_factory, name, lambda d: train(config(d / "m"), log=lambda m: None)) / "m"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_data, base_model_dir) -> Path:
    """A real 6-step LoRA fine-tune of the default model on the tiny data (uninterrupted reference run)."""
    return trained(tmp_path_factory, "model", lambda out: tiny_sft_config(tiny_data, out))


@pytest.fixture(scope="session")
def recommender(tiny_model):
    from genrec.infer.recommender import Recommender

    return Recommender(tiny_model)


@pytest.fixture(scope="session")
def semantic_model(tmp_path_factory, tiny_data, base_model_dir) -> Path:
    """A real 3-step fine-tune that writes semantic codes (new tokens), with alignment examples."""
    return trained(tmp_path_factory, "semantic", lambda out: tiny_sft_config(
        tiny_data, out, item_id="semantic", max_steps=3, save_steps=100, semantic_codebook=8, align_examples=0.25))


@pytest.fixture(scope="session")
def cut_token_model(tmp_path_factory, tiny_data, base_model_dir) -> Path:
    """A real 2-step sequence fine-tune over item tokens on the base model's first 2 decoder layers (`layers=2`),
    checkpointed by the clock after each step (`save_minutes`); its rows start from titles (`item_text=init`, the
    default's alternative)."""
    def config(out):
        cfg = tiny_sft_config(tiny_data, out, item_id="token", objective="sequence", max_steps=2, save_steps=100,
                              max_batch_tokens=600, layers=2, save_minutes=1e-4, keep_checkpoints=3, item_text="init")
        cfg.prompt.max_history, cfg.prompt.item_facts = 20, []
        return cfg

    return trained(tmp_path_factory, "cut", config)


@pytest.fixture(scope="session")
def talking_model(tmp_path_factory, tiny_data, base_model_dir) -> Path:
    """One model that ranks and talks: a real 3-step sequence fine-tune over item tokens (2 decoder layers) whose
    windows also carry request lines and reasons (`prompt.request_share`, `prompt.reason_share`)."""
    def config(out):
        cfg = tiny_sft_config(tiny_data, out, item_id="token", objective="sequence", max_steps=3, save_steps=100,
                              max_batch_tokens=600, layers=2)
        cfg.prompt.max_history, cfg.prompt.item_facts = 20, []
        cfg.prompt.request_share = cfg.prompt.reason_share = 0.5
        return cfg

    return trained(tmp_path_factory, "talking", config)


@pytest.fixture(scope="session")
def rerank_model(tmp_path_factory, tiny_data, base_model_dir) -> Path:
    """A real 3-step fine-tune of the rerank task, its SASRec retriever trained (briefly) and saved inside it."""
    def config(out):
        cfg = tiny_sft_config(tiny_data, out, max_steps=3, save_steps=100, retriever_seconds=20.0)
        cfg.prompt = PromptConfig(task="rerank", max_history=3, max_prompt_tokens=128, rerank_candidates=8)
        return cfg

    return trained(tmp_path_factory, "rerank", config)


TASKS = ["next_item", "preference", "rating", "request"]


@pytest.fixture(scope="session")
def mixed_model(tiny_data, tmp_path_factory):
    """One real 4-step fine-tune mixing four tasks (request text reaches its prompts)."""
    def config(out):
        cfg = tiny_sft_config(tiny_data, out, max_steps=4, save_steps=100, tasks=TASKS)
        cfg.prompt = PromptConfig(max_history=3, max_prompt_tokens=200)
        return cfg

    return trained(tmp_path_factory, "mixed", config)
