"""Metrics on hand-computed cases, and `genrec evaluate` with its baselines on a real model."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from genrec.cli import main
from genrec.evaluation import rank_metrics


def test_metrics_hand_computed():
    catalog = {"a", "b", "c", "d"}
    ranked = [["a", "b", "c"], ["b", "c", "a"], ["d", "c", "b"]]
    targets = ["a", "a", "a"]  # ranks 1, 3, absent
    m = rank_metrics(ranked, targets, [1, 3], catalog)
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@3"] == pytest.approx(2 / 3)
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["validity"] == 1.0 and m["coverage"] == 1.0


def test_validity_counts_invalid_ids():
    m = rank_metrics([["a", "zzz"]], ["a"], [2], {"a", "b"})
    assert m["validity"] == 0.5 and m["coverage"] == 1.0


def test_evaluate_cli(tmp_path, tiny_model):
    out = tmp_path / "eval"
    res = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--max-users", "6", "--k", "1,5,10",
                                    "--output", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["results"]) == {"genrec", "popular", "sasrec"}
    assert report["users_evaluated"] == 6
    g = report["results"]["genrec"]
    assert g["validity"] == 1.0 and 0.0 <= g["NDCG@10"] <= g["HR@10"] <= 1.0
    assert (out / "metrics.png").stat().st_size > 1000 and "| genrec |" in (out / "metrics.md").read_text()
    lines = (out / "recommendations.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(len(json.loads(x)["recommended"]) == 10 for x in lines)


def test_evaluate_bad_options(tiny_model):
    res = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--baselines", "magic"])
    assert res.exit_code == 2 and "unknown baseline" in res.output
