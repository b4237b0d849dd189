"""Distributed fine-tuning for real: `accelerate launch` with two CPU processes (gloo) on the tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TITLE_RECIPE

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "cpu_2proc.yaml"


def launch(tiny_data, out, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "-m", "genrec.cli",
           "sft", "--data", str(tiny_data), "--output", str(out), "--objective", "prefix", "batch_size=2",
           "save_steps=2", "logging_steps=1", "lora_r=4", "lora_alpha=8", "prompt.max_history=3",
           "prompt.max_prompt_tokens=128", "seed=7", *TITLE_RECIPE, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


def test_two_cpu_processes_write_one_model_and_resume(tiny_data, tmp_path):
    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query

    out = tmp_path / "m"
    p = launch(tiny_data, out, "max_steps=2")
    assert p.returncode == 0, p.stderr[-3000:]
    card = json.loads((out / "genrec.json").read_text())
    # the global batch is per-device batch x processes: 2 steps x 2 x 2 = 8 examples, one pass over them
    assert card["processes"] == 2 and card["global_batch"] == 4 and card["train_examples"] == 8
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][-1]["epoch"] == pytest.approx(1.0)
    assert len((out / "loss.jsonl").read_text().splitlines()) == 2  # one writer: one line per logged step
    rec = Recommender(out)
    res = rec.recommend([Query(history=["1", "260"])], k=3)[0].items
    assert len(res) == 3 and all(r.item_id in rec.catalog for r in res)

    (out / "genrec.json").unlink()  # as if killed after checkpoint-2: an unfinished run
    p = launch(tiny_data, out, "max_steps=4", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming from" in p.stdout + p.stderr
    card = json.loads((out / "genrec.json").read_text())
    assert card["global_step"] == 4 and card["processes"] == 2
