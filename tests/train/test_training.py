"""Real TRL + PEFT fine-tuning of the default model on a few steps: loss, outputs, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from genrec.cli import main
from genrec.model_dir import CHECKPOINT_DONE, MODEL_CARD

from conftest import TITLE_RECIPE, tiny_sft_config


def test_output_directory_is_self_contained(tiny_model):
    names = {p.name for p in tiny_model.iterdir()}
    for needed in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "item_index.json",
                   "catalog.jsonl", "template.j2", "popularity.json", "loss.jsonl", "loss.png", MODEL_CARD):
        assert needed in names, needed
    card = json.loads((tiny_model / MODEL_CARD).read_text())
    assert card["global_step"] == 6 and card["sft"]["lora_r"] == 8


def test_loss_falls(tmp_path, tiny_data):
    """Repeating one small batch with a high learning rate: the completion loss must drop clearly."""
    from genrec.train.recipe import train

    cfg = tiny_sft_config(tiny_data, tmp_path / "m", max_steps=8, max_train_examples=4, batch_size=4,
                          learning_rate=5e-3, num_epochs=8.0, lora_dropout=0.0, save_steps=100)
    train(cfg, log=lambda m: None)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "m" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 8
    assert losses[-1] < 0.6 * losses[0], losses


def test_model_loads_back_and_generates(recommender, tiny_data):
    from genrec.infer.query import Query

    hist = list(recommender.catalog)[:2]
    res = recommender.recommend([Query(history=hist, seen=set(hist))], k=3)[0]
    assert len(res.items) == 3
    assert all(r.item_id in recommender.catalog for r in res.items)


def _adapter(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _sft_args(cfg, data, out, save_steps: int) -> list[str]:
    return [sys.executable, "-m", "genrec.cli", "sft", "--data", str(data), "--output", str(out),
            f"batch_size={cfg.batch_size}", f"max_steps={cfg.max_steps}", f"save_steps={save_steps}",
            f"learning_rate={cfg.learning_rate}", f"lora_r={cfg.lora_r}", f"lora_alpha={cfg.lora_alpha}",
            f"seed={cfg.seed}", "logging_steps=1", f"prompt.max_history={cfg.prompt.max_history}",
            f"prompt.max_prompt_tokens={cfg.prompt.max_prompt_tokens}", f"objective={cfg.objective}",
            # the reference run's facts (other prompt keys keep SFTConfig's own defaults, item_facts=[] among them)
            "prompt.item_facts=" + ("none" if cfg.prompt.item_facts is None else ",".join(cfg.prompt.item_facts)),
            *TITLE_RECIPE]


def _assert_same_adapter(a: Path, b: Path) -> None:
    ref, got = _adapter(a), _adapter(b)
    assert ref.keys() == got.keys()
    for key in ref:
        assert (ref[key] - got[key]).abs().max().item() < 1e-5, key


def _kill_when(proc, ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "training ended before the kill"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_resume_after_sigkill_reaches_the_same_adapter(tmp_path, tiny_data, tiny_model):
    """Kill -9 after the first checkpoint, resume, and compare with the uninterrupted reference run."""
    out = tmp_path / "killed"
    cfg = tiny_sft_config(tiny_data, out)
    args = _sft_args(cfg, tiny_data, out, cfg.save_steps)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: (out / "checkpoint-3" / CHECKPOINT_DONE).exists())
    assert not (out / MODEL_CARD).exists()
    # An unfinished run is refused as a model, and refused as an output without --resume.
    res = CliRunner().invoke(main, ["generate", "--model", str(out), "--users", str(tmp_path / "u.jsonl")])
    assert res.exit_code == 2
    (tmp_path / "u.jsonl").write_text('{"history": ["1"]}\n')
    res = CliRunner().invoke(main, ["generate", "--model", str(out), "--users", str(tmp_path / "u.jsonl")])
    assert res.exit_code == 2 and "unfinished training run" in res.output
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / MODEL_CARD).exists()
    _assert_same_adapter(tiny_model, out)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume(tmp_path, tiny_data, tiny_model):
    """Checkpoints every step and kill -9 at a seeded random moment after the first one (possibly in the middle
    of writing a checkpoint): resume uses the newest complete checkpoint and reaches the same adapter."""
    import random

    out = tmp_path / "killed"
    cfg = tiny_sft_config(tiny_data, out)
    args = _sft_args(cfg, tiny_data, out, 1)
    # within the next steps, not after them: a kill the run outlives would test nothing (it fails, never skips)
    delay = random.Random(int(os.environ.get("GENREC_KILL_SEED", "3"))).uniform(0.0, 1.5)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = [None]

    def ready() -> bool:
        if first[0] is None and (out / "checkpoint-1" / CHECKPOINT_DONE).exists():
            first[0] = time.time()
        return first[0] is not None and time.time() - first[0] >= delay

    _kill_when(proc, ready)
    assert not (out / MODEL_CARD).exists(), "training finished before the kill: the kill came too late"
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_adapter(tiny_model, out)


def test_overwrite_never_deletes_a_directory_genrec_did_not_write(tmp_path, tiny_data):
    """--overwrite on a directory holding only an unrelated file (or on a file) is a one-line error that leaves it
    as it was; without --overwrite too."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    cfg = tiny_sft_config(tiny_data, out)
    for extra, needle in ((["--overwrite"], "refusing to delete it"), ([], "holds no genrec run")):
        r = subprocess.run(_sft_args(cfg, tiny_data, out, 3) + extra, capture_output=True, text=True)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert [p.name for p in out.iterdir()] == ["thesis.tex"] and (out / "thesis.tex").read_text() == "years of work"
        assert not list(tmp_path.glob(".notes.*"))
    (tmp_path / "file").write_text("x")
    r = subprocess.run(_sft_args(cfg, tiny_data, tmp_path / "file", 3) + ["--overwrite"], capture_output=True, text=True)
    assert r.returncode == 2 and "is a file" in r.stderr and (tmp_path / "file").read_text() == "x"


def test_overwrite_killed_keeps_the_old_model_then_resume_replaces_it(tmp_path, tiny_data, tiny_model):
    """`--overwrite` trains beside the old model: kill -9 after its first checkpoint and the old model is still
    there and loadable, unchanged; --resume finishes the new run and only then replaces the old model."""
    import shutil

    from genrec.model_dir import ModelCard
    from genrec.infer.recommender import Recommender

    out = tmp_path / "m"
    shutil.copytree(tiny_model, out)
    before = _adapter(out)
    cfg = tiny_sft_config(tiny_data, out)
    args = _sft_args(cfg, tiny_data, out, cfg.save_steps) + ["learning_rate=0.01"]  # another model than the old
    proc = subprocess.Popen(args + ["--overwrite"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: (tmp_path / ".m.next" / "checkpoint-3" / CHECKPOINT_DONE).exists())
    assert ModelCard.load(out).stats["global_step"] == 6
    after = _adapter(out)
    assert all((before[k] == after[k]).all() for k in before)
    assert Recommender(out).recommend([], k=1) == []
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    new = _adapter(out)
    assert not all((before[k] == new[k]).all() for k in before)
    assert not (tmp_path / ".m.next").exists() and not (tmp_path / ".m.old").exists()
    assert ModelCard.load(out).sft["learning_rate"] == 0.01
    assert f"genrec serve --model {out} " in (out / "README.md").read_text()
    assert ".m.next" not in (out / "README.md").read_text()


def test_a_model_left_aside_by_a_kill_between_the_renames_loads(tmp_path, tiny_model):
    """`sft --overwrite` and `catalog add` swap a model in by two renames; a kill between them leaves the old model
    at `.m.old` and nothing at `m`. Loading `m` puts it back: the user's model is never lost to the swap."""
    import shutil

    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.model_dir import ModelCard

    shutil.copytree(tiny_model, tmp_path / ".m.old")
    out = tmp_path / "m"
    card = ModelCard.load(out)
    assert card.dir == out and not (tmp_path / ".m.old").exists()
    user = Recommender(out).recommend([Query(history=[card.item_index().item_ids[0]])], k=3)
    assert len(user[0].item_ids) == 3


def test_resume_passes_over_a_checkpoint_genrec_did_not_finish(tmp_path, tiny_data, cut_token_model):
    """A kill between the trainer's files and genrec's (code rows, clock, marker) leaves a checkpoint the trainer
    would take: --resume takes the one before it instead, and finishes."""
    import shutil

    from genrec.model_dir import last_checkpoint

    out = tmp_path / "run"
    shutil.copytree(cut_token_model, out, ignore=shutil.ignore_patterns(MODEL_CARD))  # an unfinished run
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(ckpts) >= 2 and all((c / CHECKPOINT_DONE).is_file() for c in ckpts)
    newest = ckpts[-1]
    for name in (CHECKPOINT_DONE, "code_embeddings.safetensors", "clock.json"):
        (newest / name).unlink(missing_ok=True)
    assert (newest / "trainer_state.json").is_file() and last_checkpoint(out) == ckpts[-2]
    import yaml

    from genrec.config import SFTConfig, load_config
    from genrec.train.recipe import train

    card = json.loads((cut_token_model / MODEL_CARD).read_text())
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump({**card["sft"], "output": str(out), "resume": True}))
    logs: list[str] = []
    train(load_config(SFTConfig, tmp_path / "sft.yaml"), log=logs.append)
    assert f"resuming from {ckpts[-2]}" in logs
    assert json.loads((out / MODEL_CARD).read_text())["global_step"] == card["global_step"]


def test_grad_accum_and_report_to(tmp_path, tiny_data):
    """grad_accum=2: each optimizer step takes two batches (the card's global batch, the trainer's step count);
    report_to names a tracker that is checked before anything is written: unknown or not installed is one line."""
    from genrec.train.recipe import train

    out = tmp_path / "acc"
    train(tiny_sft_config(tiny_data, out, max_steps=2, save_steps=100, grad_accum=2, batch_size=2,
                          report_to=["none"]), log=lambda m: None)
    card = json.loads((out / MODEL_CARD).read_text())
    assert card["global_step"] == 2 and card["global_batch"] == 4 and card["sft"]["grad_accum"] == 2
    for tracker, needle in (("tensorboardx", "unknown tracker 'tensorboardx'"), ("wandb", "wandb is not installed")):
        r = subprocess.run(_sft_args(tiny_sft_config(tiny_data, tmp_path / tracker), tiny_data, tmp_path / tracker, 3)
                           + [f"report_to={tracker}"], capture_output=True, text=True)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / tracker).exists()


@pytest.mark.parametrize("args,needle", [
    (["--data", "/nonexistent/data"], "not a prepared genrec dataset"),
    (["--model", "/nonexistent/model"], "does not exist"),
    (["bogus_key=1"], "unknown config key 'bogus_key'"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
    (["item_id=title", "label_smoothing=0.1"], "label_smoothing applies to the item softmax"),
    (["item_id=title", "item_weight_decay=0.5"], "item_weight_decay must be >= 0 and applies to new item tokens"),
    (["item_id=token", "objective=sequence", "label_smoothing=1"], "label_smoothing must be in [0, 1)"),
])
def test_bad_sft_input(tmp_path, tiny_data, args, needle):
    base = ["sft", "--output", str(tmp_path / "o")]
    if "--data" not in args:
        base += ["--data", str(tiny_data)]
    res = CliRunner().invoke(main, base + args)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_empty_training_split(tmp_path):
    """Users with exactly 3 interactions have no training example: a clear error, no model written."""

    inter = tmp_path / "i.csv"
    inter.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},{i},{i}\n" for u in range(3) for i in range(3)))
    cat = tmp_path / "c.csv"
    cat.write_text("item_id,title\n0,A\n1,B\n2,C\n")
    res = CliRunner().invoke(main, ["data", "prepare", "--interactions", str(inter), "--catalog", str(cat),
                                    "--output", str(tmp_path / "d"), "--min-user-interactions", "3",
                                    "--min-item-interactions", "1"])
    assert res.exit_code == 2 and "training split is empty" in res.output


def test_resume_restores_code_token_rows(tmp_path, tiny_data):
    """Semantic ids: a run resumed from checkpoint-1 ends with the same code-token rows and adapter as one
    that was never interrupted (the rows travel with every checkpoint)."""
    import shutil

    from safetensors.torch import load_file

    from genrec.train.recipe import train

    kw = dict(item_id="semantic", semantic_codebook=4, max_steps=2, save_steps=1)
    full = tmp_path / "full"
    train(tiny_sft_config(tiny_data, full, **kw), log=lambda m: None)
    assert (full / "checkpoint-1" / "code_embeddings.safetensors").is_file()
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoint-2")
    for name in ("genrec.json", "code_embeddings.safetensors", "adapter_model.safetensors"):
        (cut / name).unlink()
    train(tiny_sft_config(tiny_data, cut, resume=True, **kw), log=lambda m: None)
    a, b = (load_file(str(p / "code_embeddings.safetensors"))["rows_0"] for p in (full, cut))
    assert (a - b).abs().max().item() < 1e-5
    fa, fb = _adapter(full), _adapter(cut)
    assert max((fa[k] - fb[k]).abs().max().item() for k in fa) < 1e-5


def test_item_weight_decay_shrinks_the_new_rows_alone(tmp_path, tiny_data):
    """item_weight_decay on the real trainer: one step from the same start with and without it, at a constant
    learning rate; the new item rows come out scaled by exactly 1 - lr x decay (AdamW's decoupled decay, after the
    step), the base vocabulary's rows untouched by either run."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from genrec.train.recipe import train

    lr, decay = 0.01, 5.0
    rows = {}
    for d in (0.0, decay):
        out = tmp_path / f"d{d}"
        cfg = tiny_sft_config(tiny_data, out, item_id="token", objective="sequence", max_steps=1, save_steps=100,
                              max_batch_tokens=600, layers=2, learning_rate=lr, lr_scheduler="constant",
                              warmup_ratio=0.0, item_weight_decay=d, item_text="init")  # grounded: the residual's
        cfg.prompt.max_history, cfg.prompt.item_facts = 20, []
        train(cfg, log=lambda m: None)
        rows[d] = load_file(str(out / "code_embeddings.safetensors"))["rows_0"]
    plain, decayed = rows[0.0], rows[decay]
    assert plain.abs().sum() > 0 and not torch.equal(plain, decayed)
    assert torch.allclose(decayed, plain * (1 - lr * decay), rtol=1e-5, atol=1e-7)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / f"d{decay}" / "merged"))
    base = AutoModelForCausalLM.from_pretrained(str(_base_dir()))
    n = base.get_input_embeddings().weight.shape[0]
    assert torch.equal(merged.get_input_embeddings().weight[:n], base.get_input_embeddings().weight)


def _base_dir():
    from genrec.model_dir import resolve_base_model

    return resolve_base_model("default")


def test_embedding_dropout_acts_in_training_only(base_model_dir):
    """embedding_dropout=p: two training-mode passes differ, eval mode equals the model without it; p outside
    [0, 1) is a one-line error."""
    import torch
    from transformers import AutoModelForCausalLM

    from genrec.errors import GenrecError
    from genrec.model_dir import keep_layers
    from genrec.train.losses import embedding_dropout

    def cut():
        m = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
        keep_layers(m, 1)
        return m

    plain, model = cut(), cut()
    embedding_dropout(model, 0.3)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        model.train()
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
        model.eval()
        plain.eval()
        assert not torch.allclose(a, b)
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    with pytest.raises(GenrecError, match="embedding_dropout must be in"):
        embedding_dropout(model, 1.0)


def test_the_model_directory_has_genrecs_own_readme(tmp_path, tiny_model):
    """README.md is genrec's card, not the adapter library's placeholder: base model, data hash, identifiers, the
    recipe and steps, how to use it; `genrec evaluate` (default output) adds the test results, atomically."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    text = (model / "README.md").read_text()
    card = json.loads((model / MODEL_CARD).read_text())
    assert "fine-tuned version of" not in text and "[More Information Needed]" not in text
    assert text.startswith("# m: a genrec recommender") and "SmolLM2-135M-Instruct" in text
    assert f"{card['global_step']} steps" in text and "item titles" in text and "Not evaluated yet" in text
    assert f"genrec serve --model {tiny_model}" in text  # where it was trained
    res = CliRunner().invoke(main, ["evaluate", "--model", str(model), "--max-users", "4", "--k", "10",
                                    "--baselines", "popular"])
    assert res.exit_code == 0, res.output
    report = json.loads((model / "eval-test" / "metrics.json").read_text())
    text = (model / "README.md").read_text()
    assert "Not evaluated yet" not in text and "4 test users" in text and f"genrec serve --model {model}" in text
    row = next(line for line in text.splitlines() if line.startswith("| genrec |"))
    assert f"{report['results']['genrec']['NDCG@10']:.4f}" in row
    assert not [p.name for p in model.iterdir() if p.name.startswith(".README")]
