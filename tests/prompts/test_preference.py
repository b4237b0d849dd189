"""Preference prediction on the real tiny model: yes/no training pairs, P(yes) from logits, AUC, `genrec rank`."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from click.testing import CliRunner

from genrec.cli import main
from genrec.data.prepared import load_prepared
from genrec.errors import GenrecError


@pytest.fixture(scope="module")
def pref_model(tiny_data, tmp_path_factory):
    from conftest import tiny_sft_config
    from genrec.config import PromptConfig
    from genrec.train.recipe import train

    out = tmp_path_factory.mktemp("pref") / "m"
    cfg = tiny_sft_config(tiny_data, out, max_steps=4, save_steps=100)
    cfg.prompt = PromptConfig(task="preference", max_history=3, max_prompt_tokens=160)
    train(cfg, log=lambda m: None)
    return out


def test_training_pairs_are_yes_for_the_next_item_and_no_for_an_unseen_one(tokenizer, tiny_data):
    from genrec.config import PromptConfig
    from genrec.items.index import ItemIndex
    from genrec.prompts.sequence import make_builder
    from genrec.train.examples import build_examples

    data = load_prepared(tiny_data)
    b = make_builder(tokenizer, PromptConfig(task="preference"), data.catalog,
                     ItemIndex.build(list(data.catalog.values())))
    yes, no = b.task.answer_ids()
    rows = data.split("train")
    ex, skipped = build_examples(b, rows, 20, seed=5, users=data.users)
    assert skipped == 0 and len(ex) == 20
    answers = [e["input_ids"][-2] for e in ex]
    assert answers.count(yes) == answers.count(no) == 10
    for e in ex:
        assert e["completion_mask"][-2:] == [1, 1] and sum(e["completion_mask"]) == 2
    again, _ = build_examples(b, rows, 20, seed=5, users=data.users)
    assert again == ex  # seeded negatives
    # every "no" candidate is an item that user never interacted with
    text = b.as_text(ex[1]["input_ids"]) if ex[1]["input_ids"][-2] == no else b.as_text(ex[0]["input_ids"])
    assert "Candidate: " in text


def test_auc_matches_pair_counting():
    from genrec.metrics import auc

    rng = random.Random(0)
    scores = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(40)]
    labels = [rng.randint(0, 1) for _ in range(40)]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    brute = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert auc(scores, labels) == pytest.approx(brute)
    with pytest.raises(GenrecError):
        auc([0.1, 0.2], [1, 1])


def test_p_yes_is_the_softmax_of_the_two_answer_logits(pref_model, tiny_data):
    import torch

    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query

    rec = Recommender(pref_model)
    data = load_prepared(tiny_data)
    row = data.split("test")[0]
    req = Query(history=row["history"])
    cands = [row["target"], list(data.catalog)[0]]
    probs = rec.score("preference", [req], [cands])[0]
    yes, no = rec.builder.task.answer_ids()
    for c, p in zip(cands, probs):
        ids = rec.builder.encode(row["history"], candidate=c)
        with torch.no_grad():
            logits = rec.model(torch.tensor([ids])).logits[0, -1]
        assert p == pytest.approx(torch.softmax(logits[[yes, no]].float(), -1)[0].item(), abs=1e-4)
        assert 0 < p < 1
    with pytest.raises(GenrecError, match="preference model"):
        rec.recommend([req], k=3)


def test_evaluate_reports_auc_and_log_loss(pref_model, tmp_path):
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation

    rep = run_evaluation(EvaluateConfig(model=str(pref_model), max_users=8, negatives=3, output=str(tmp_path / "ev")),
                         log=lambda m: None)
    g = rep["results"]["genrec"]
    assert "popular" in rep["results"]
    lines = [json.loads(x) for x in (tmp_path / "ev" / "scores.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all(ln["labels"] == [1, 0, 0, 0] for ln in lines)
    # AUC and log loss recomputed by hand from the scores it wrote: every positive against every negative
    import math

    pos = [s for ln in lines for s, y in zip(ln["scores"], ln["labels"]) if y]
    neg = [s for ln in lines for s, y in zip(ln["scores"], ln["labels"]) if not y]
    pairs = [(p, n) for p in pos for n in neg]
    assert g["AUC"] == pytest.approx(sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs))
    probs = [(p, y) for ln in lines for p, y in zip(ln["scores"], ln["labels"])]
    assert g["log_loss"] == pytest.approx(-sum(math.log(p if y else 1 - p) for p, y in probs) / len(probs), rel=1e-3)
    data = load_prepared(json.loads((pref_model / "genrec.json").read_text())["data"])
    for ln in lines:  # negatives are items the user never interacted with
        assert not set(ln["candidates"][1:]) & set(data.users[ln["user_id"]]["items"])


def test_rank_cli(pref_model, tiny_data, tmp_path):
    data = load_prepared(tiny_data)
    items = list(data.catalog)
    user = next(iter(data.users))
    lines = [{"user_id": user, "candidates": items[:4]}, {"history": items[5:8], "candidates": items[10:13]},
             {"history": items[5:8], "candidates": ["no-such-item"]}]
    cand = tmp_path / "cands.jsonl"
    cand.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "ranked.jsonl"
    r = CliRunner().invoke(main, ["rank", "--model", str(pref_model), "--candidates", str(cand), "--out", str(out)])
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["index"] for g in got] == [1, 2]
    for g, src in zip(got, lines):
        ps = [x["p_yes"] for x in g["ranked"]]
        assert ps == sorted(ps, reverse=True) and {x["item_id"] for x in g["ranked"]} == set(src["candidates"])
    r = CliRunner().invoke(main, ["rank", "--model", str(pref_model), "--candidates", str(cand), "--out",
                                  str(tmp_path / "x.jsonl"), "--strict"])
    assert r.exit_code != 0 and "unknown candidate item id 'no-such-item'" in r.output
    assert not (tmp_path / "x.jsonl").exists()
