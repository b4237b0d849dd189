"""Metrics on hand-computed cases, and `genrec evaluate` with its baselines on a real model."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from genrec.cli import main
from genrec.errors import GenrecError
from genrec.metrics import rank_metrics


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
    # the console shows the columns that matter with intervals, one sentence on their meaning, the verdict, and
    # where the full tables are (not the every-metric table of metrics.md)
    assert "| model | NDCG@10 | HR@10 | MRR |" in res.output and "is the share of users" in res.output
    assert "On these 6 users genrec is" in res.output and f"{out}/metrics.md" in res.output
    assert "HR@1 |" not in res.output and "| HR@1 |" in (out / "metrics.md").read_text()
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["results"]) == {"genrec", "popular", "sasrec"}
    assert report["users_evaluated"] == 6
    g = report["results"]["genrec"]
    assert (out / "metrics.png").stat().st_size > 1000 and "| genrec |" in (out / "metrics.md").read_text()
    lines = [json.loads(x) for x in (out / "recommendations.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(len(x["recommended"]) == 10 for x in lines)
    # the report's metrics, recomputed by hand from the per-user lines it wrote
    import math

    ranks = [x["recommended"].index(x["target"]) + 1 if x["target"] in x["recommended"] else None for x in lines]
    for k in (1, 5, 10):
        assert g[f"HR@{k}"] == pytest.approx(sum(r is not None and r <= k for r in ranks) / 6)
        assert g[f"NDCG@{k}"] == pytest.approx(sum(1 / math.log2(r + 1) for r in ranks if r is not None and r <= k)
                                               / 6)
    from genrec.model_dir import ModelCard

    catalog = {row["item_id"] for row in ModelCard.load(tiny_model).catalog_rows()}
    recommended = [i for x in lines for i in x["recommended"]]
    assert g["validity"] == pytest.approx(sum(i in catalog for i in recommended) / len(recommended))
    # intervals for every model, paired differences against each baseline, baselines on every user of the split
    for name, m in report["results"].items():
        iv = report["intervals"][name]["NDCG@10"]
        assert iv["lo"] <= m["NDCG@10"] <= iv["hi"] and iv["mean"] == pytest.approx(m["NDCG@10"])
    assert set(report["paired_differences"]) == {"genrec - popular", "genrec - sasrec"}
    d = report["paired_differences"]["genrec - popular"]["NDCG@10"]
    assert d["lo"] <= d["diff"] <= d["hi"] and d["lo"] < d["hi"] or d["lo"] == d["hi"] == d["diff"]
    assert set(report["baselines_all_users"]) == {"popular", "sasrec"}
    assert report["users_in_split"] > 6 and report["sasrec"]["converged"] and not report["sasrec"]["capped"]
    md = (out / "metrics.md").read_text()
    assert "95% bootstrap intervals (6 users" in md and f"all {report['users_in_split']} users" in md
    # sliced by history length and by the target's popularity tier: every user in exactly one group of each
    for kind in ("history_length", "target_popularity"):
        groups = report["slices"][kind]
        assert sum(g["users"] for g in groups.values()) == 6
        assert all(set(g["models"]) == {"genrec", "popular", "sasrec"} for g in groups.values())
        for g in groups.values():  # each group's own paired differences: genrec minus each baseline on its users
            assert set(g["paired"]) == {"genrec - popular", "genrec - sasrec"}
            for b in ("popular", "sasrec"):
                d = g["paired"][f"genrec - {b}"]["NDCG@10"]
                assert d["diff"] == pytest.approx(g["models"]["genrec"]["NDCG@10"]["mean"]
                                                  - g["models"][b]["NDCG@10"]["mean"], abs=1e-9)
                assert d["lo"] <= d["diff"] <= d["hi"]
    assert "NDCG@10 by user group" in md and "On these 6 users genrec is" in res.output


def test_popularity_tiers_split_interactions_in_thirds():
    from collections import Counter

    from genrec.metrics import popularity_tiers

    tiers = popularity_tiers(Counter({"a": 50, "b": 30, "c": 10, "d": 5, "e": 5}))
    assert tiers == {"a": "head", "b": "torso", "c": "tail", "d": "tail", "e": "tail"}


def test_evaluate_bad_options(tiny_model):
    res = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--baselines", "magic"])
    assert res.exit_code == 2 and "unknown baseline" in res.output


def test_beyond_accuracy_hand_computed():
    from collections import Counter

    from genrec.metrics import beyond_accuracy

    catalog = {"a": {"attrs": {"genres": "X|Y"}}, "b": {"attrs": {"genres": "X"}}, "c": {"attrs": {"genres": "Z"}},
               "d": {"attrs": {}}}
    counts = Counter({"a": 6, "b": 3, "c": 1})
    m, target_pct = beyond_accuracy([["a", "b"], ["c", "d"]], ["c", "a"], counts, catalog)
    assert m["ILD"] == pytest.approx((0.5 + 1.0) / 2)  # Jaccard distances {x,y}/{x} and {z}/{}
    assert m["novelty"] == pytest.approx(sum(-math.log2((c + 1) / 14) for c in (6, 3, 1, 0)) / 4)
    assert m["pop_pct"] == pytest.approx((1 + 2 / 3 + 1 / 3 + 0) / 4)
    assert m["long_tail"] == pytest.approx(0.5)  # head = {a, b}: the items holding 80% of interactions
    assert target_pct == pytest.approx((1 / 3 + 1) / 2)


def test_perturbations_are_seeded_and_shaped():
    import random

    from genrec.eval.protocol import parse_perturb, perturb_history

    h = [str(i) for i in range(10)]
    items = ["x", "y", "z"]
    ins = perturb_history(h, "insert", 0.2, items, random.Random(1))
    assert len(ins) == 12 and [i for i in ins if i in h] == h
    assert ins == perturb_history(h, "insert", 0.2, items, random.Random(1))
    drop = perturb_history(h, "drop", 0.5, items, random.Random(1))
    assert len(drop) == 5 and [i for i in h if i in drop] == drop
    assert perturb_history(["1"], "drop", 1.0, items, random.Random(1)) == ["1"]  # one item always stays
    sh = perturb_history(h, "shuffle", 1.0, items, random.Random(1))
    assert sorted(sh) == sorted(h) and sh != h
    assert parse_perturb("shuffle") == ("shuffle", 1.0) and parse_perturb("insert:0.3") == ("insert", 0.3)
    for bad in ("noise:0.1", "drop:x", "drop:0", "insert:2"):
        with pytest.raises(Exception, match="perturbation"):
            parse_perturb(bad)


def test_evaluate_with_perturbation(tmp_path, tiny_model):
    out = tmp_path / "eval"
    res = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--max-users", "4", "--k", "5",
                                    "--baselines", "sasrec", "--perturb", "drop:0.5", "--output", str(out),
                                    "sasrec_seconds=5"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["results"]) == {"genrec", "sasrec"}  # perturbed runs are reported as drops, not models
    for model in ("genrec", "sasrec"):
        for v in report["perturbation"]["models"][model].values():
            assert v["drop"] == pytest.approx(v["clean"] - v["perturbed"])
        assert 0.0 <= report["results"][model]["pop_pct"] <= 1.0 and report["results"][model]["ILD"] >= 0.0
    assert "Perturbation `drop:0.5`" in (out / "metrics.md").read_text()
    bad = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--perturb", "noise"])
    assert bad.exit_code == 2 and "unknown perturbation" in bad.output


def test_evaluate_the_validation_split(tmp_path, tiny_model, tiny_data):
    """--split valid holds out each user's second-to-last item: the lines' targets are the valid split's."""
    from genrec.data.prepared import load_prepared

    out = tmp_path / "ev"
    res = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--split", "valid", "--max-users", "4",
                                    "--k", "5", "--baselines", "popular", "--output", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "valid" and report["users_evaluated"] == 4
    data = load_prepared(tiny_data)
    for x in map(json.loads, (out / "recommendations.jsonl").read_text().splitlines()):
        assert x["target"] == data.users[x["user_id"]]["items"][-2]


def test_cold_item_protocol_reports_cold_and_warm_targets_beside_a_content_baseline(tmp_path, tiny_raw):
    """Data prepared with --cold-items: evaluate slices cold and warm targets for genrec and every baseline and adds
    the content baseline (MiniLM cosine, no training); most-popular cannot rank a cold item, the content baseline
    ranks it by text alone (checked by hand for one user)."""
    import numpy as np

    from conftest import tiny_sft_config
    from genrec.config import DataConfig, EvaluateConfig
    from genrec.data.prepared import load_prepared
    from genrec.data.prepare import prepare
    from genrec.eval.protocol import run_evaluation
    from genrec.items.text import item_text, text_embeddings
    from genrec.train.recipe import train

    data_dir = tmp_path / "data"
    prepare(DataConfig(interactions=str(tiny_raw[0]), catalog=str(tiny_raw[1]), output=str(data_dir),
                       min_item_interactions=1, cold_items=0.3), log=lambda m: None)
    data = load_prepared(data_dir)
    model = tmp_path / "m"
    cfg = tiny_sft_config(data_dir, model, item_id="token", objective="sequence", max_steps=2, save_steps=100,
                          max_batch_tokens=600, layers=2)
    cfg.prompt.max_history, cfg.prompt.item_facts = 20, []
    train(cfg, log=lambda m: None)
    report = run_evaluation(EvaluateConfig(model=str(model), ks=[10], baselines=["popular"],
                                           output=str(tmp_path / "eval")), log=lambda m: None)
    assert set(report["results"]) == {"genrec", "popular", "content"}
    target = report["slices"]["target"]
    cold_users = sum(r["target"] in data.cold_items for r in data.split("test"))
    assert target["cold"]["users"] == cold_users > 0
    assert target["cold"]["users"] + target["warm"]["users"] == report["users_evaluated"]
    assert target["cold"]["models"]["popular"]["HR@10"]["mean"] == 0.0  # no training count, never ranked
    assert "| cold |" in (tmp_path / "eval" / "metrics.md").read_text()
    # the content baseline by hand for the first test user: cosine of the mean history vector, seen items excluded
    row = data.split("test")[0]
    ids = list(data.catalog)
    emb = text_embeddings([item_text(data.catalog[i]) for i in ids])
    user = emb[[ids.index(i) for i in row["history"]]].mean(0)
    scores = emb @ user
    scores[[ids.index(i) for i in set(row["history"]) - {row["target"]}]] = -np.inf
    lines = [json.loads(x) for x in (tmp_path / "eval" / "recommendations.jsonl").read_text().splitlines()]
    assert lines[0]["user_id"] == row["user_id"]
    from genrec.eval.baselines import content_rankings

    seen = set(row["history"]) - {row["target"]}
    assert content_rankings(data.catalog, [row["history"]], [seen], 3)[0] == [ids[j] for j in np.argsort(-scores)[:3]]


def test_evaluate_task_request_on_a_sequence_model_with_request_lines(tmp_path, talking_model, tiny_data,
                                                                     cut_token_model):
    """--task request on an item-token sequence model trained with request lines: each user's history plus a
    request worded from the target's attributes, beside the same model on the same users without it, the request
    text alone (MiniLM retrieval, checked by hand for one request) and the baselines, paired; users whose target
    has no attributes are left out; its reasons are measured for grounding. A model trained without request lines
    answers by matching the request's words (text_match), and refuses --task request in one line at text_match 0."""
    import numpy as np

    from genrec.config import EvaluateConfig
    from genrec.data.prepared import load_prepared
    from genrec.eval.baselines import NO_REQUEST, READ_ONLY, REQUEST_TEXT
    from genrec.eval.protocol import run_evaluation
    from genrec.items.text import item_text, text_embeddings

    model = talking_model
    report = run_evaluation(EvaluateConfig(model=str(model), ks=[10], baselines=["popular"], task="request",
                                           with_reasons=True, text_match=0.0, output=str(tmp_path / "eval")),
                            log=lambda m: None)
    assert set(report["results"]) == {"genrec", NO_REQUEST, REQUEST_TEXT, "popular"}
    data = load_prepared(tiny_data)
    with_attrs = [r for r in data.split("test") if any(v.strip() for v in data.catalog[r["target"]]["attrs"].values())]
    assert report["users_evaluated"] == len(with_attrs) > 0
    assert NO_REQUEST in (tmp_path / "eval" / "metrics.md").read_text()
    grounding = report["reason_grounding"]
    assert grounding["reasons"] == report["users_evaluated"]  # one top-1 reason per user, checked
    # the request-text baseline by hand for one request
    from genrec.eval.baselines import request_text_rankings

    ids = list(data.catalog)
    emb = text_embeddings([item_text(data.catalog[i]) for i in ids])
    q = text_embeddings(["Something with genres: Comedy, please"])[0]
    order = [ids[j] for j in np.argsort(-(emb @ q))]
    assert request_text_rankings(data.catalog, ["Something with genres: Comedy, please"], [{order[0]}], 3)[0] == \
        order[1:4]
    # --text-match (by default): the fused row is genrec's, and the model's reading alone stands beside it
    fused = run_evaluation(EvaluateConfig(model=str(model), ks=[10], baselines=[], task="request",
                                          output=str(tmp_path / "fused")), log=lambda m: None)
    assert set(fused["results"]) == {"genrec", NO_REQUEST, READ_ONLY, REQUEST_TEXT}
    assert fused["results"][READ_ONLY] == report["results"]["genrec"]
    assert "genrec - " + READ_ONLY in fused["paired_differences"]
    # a next-item model answers by matching the request's words alone: no "read only" row (it reads none)
    matched = run_evaluation(EvaluateConfig(model=str(cut_token_model), ks=[10], baselines=[], task="request",
                                            output=str(tmp_path / "matched")), log=lambda m: None)
    assert set(matched["results"]) == {"genrec", NO_REQUEST, REQUEST_TEXT}
    assert matched["results"]["genrec"] != matched["results"][NO_REQUEST]
    with pytest.raises(GenrecError, match="was not trained for task 'request'"):
        run_evaluation(EvaluateConfig(model=str(cut_token_model), task="request", text_match=0.0,
                                      output=str(tmp_path / "e2")), log=lambda m: None)
    assert not (tmp_path / "e2").exists()


def test_sasrec_is_trained_once_per_data_and_settings(tmp_path, tiny_data):
    """The SASRec row is kept in the prepared data directory and read back by the next evaluation with the same
    data and settings (the same scores), retrained for other settings, and retrained when its files are damaged."""
    import shutil

    import numpy as np

    from genrec.config import EvaluateConfig
    from genrec.data.prepared import load_prepared
    from genrec.eval.baselines import sasrec_retriever
    from genrec.infer.retriever import Retriever

    shutil.copytree(tiny_data, tmp_path / "d", ignore=shutil.ignore_patterns("sasrec-cache"))  # others' runs
    data = load_prepared(tmp_path / "d")
    cfg = EvaluateConfig(model="unused", sasrec_seconds=5)
    first, facts = sasrec_retriever(None, data, cfg, False, lambda m: None)
    assert facts["source"] == "trained for this evaluation"
    again, facts = sasrec_retriever(None, data, cfg, False, lambda m: None)
    assert facts["source"].startswith("trained for an earlier evaluation")
    hist = [list(data.catalog)[:3], list(data.catalog)[5:7]]
    assert np.array_equal(first.scores(hist), again.scores(hist))
    (kept,) = (tmp_path / "d" / "sasrec-cache").iterdir()
    _, was = Retriever.cached(data, seed=cfg.seed + 1, max_seconds=5, log=lambda m: None)
    assert not was and len(list((tmp_path / "d" / "sasrec-cache").iterdir())) == 2
    (kept / "sasrec.safetensors").write_bytes(b"not weights")
    said = []
    _, was = Retriever.cached(data, seed=cfg.seed, max_seconds=5, log=said.append)
    assert not was and any("retraining SASRec" in m for m in said)
    assert Retriever.cached(data, seed=cfg.seed, max_seconds=5, log=said.append)[1]  # rewritten whole
