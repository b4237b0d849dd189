"""Several tasks in one model, rating prediction, and cross-domain transfer, on the real tiny model and data."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from genrec.cli import main
from genrec.data.prepared import load_prepared
from genrec.errors import GenrecError

from conftest import TASKS


@pytest.fixture(scope="module")
def other_data(tiny_raw, tmp_path_factory):
    """Another dataset with another catalog (a stricter item core of the same raw files)."""
    from genrec.config import DataConfig
    from genrec.data.prepare import prepare

    out = tmp_path_factory.mktemp("other") / "data"
    prepare(DataConfig(interactions=str(tiny_raw[0]), catalog=str(tiny_raw[1]), output=str(out),
                       min_item_interactions=2, min_user_interactions=3), log=lambda m: None)
    return out


def test_prepared_rows_carry_the_ratings_of_the_sequence(tiny_data):
    data = load_prepared(tiny_data)
    rows = data.split("test")
    assert len(rows) == len(data.users)
    for row in rows:
        user = data.users[row["user_id"]]
        assert len(user["ratings"]) == len(user["items"])
        assert row["target_rating"] == pytest.approx(user["ratings"][-1])
        n = len(row["history"])
        assert row["history_ratings"] == pytest.approx(user["ratings"][-1 - n:-1])
    assert {r for u in data.users.values() for r in u["ratings"]} <= {x / 2 for x in range(1, 11)}


def test_rating_levels_round_halves_up_and_clamp():
    from genrec.prompts.tasks import rating_level

    assert [rating_level(r) for r in (0.5, 1.0, 2.5, 3.49, 3.5, 4.5, 5.0, 7.0)] == [1, 1, 3, 3, 4, 5, 5, 5]


def test_rating_examples_answer_the_rating_digit_and_show_history_ratings(tokenizer, tiny_data):
    from genrec.config import PromptConfig
    from genrec.items.index import ItemIndex
    from genrec.prompts.tasks import rating_level
    from genrec.prompts.sequence import make_builder

    data = load_prepared(tiny_data)
    b = make_builder(tokenizer, PromptConfig(task="rating", max_history=4, max_prompt_tokens=400), data.catalog,
                     ItemIndex.build(list(data.catalog.values())))
    digits = b.task.answer_ids()
    assert [tokenizer.decode([d]) for d in digits] == ["1", "2", "3", "4", "5"]
    for row in list(data.split("train"))[:10]:
        (prompt, completion), = b.task.examples(row, random.Random(0), data.users)
        assert completion == [digits[rating_level(row["target_rating"]) - 1], b.eos_id]
        text = b.as_text(prompt)
        line = next(ln for ln in text.splitlines() if b.item_view(row["history"][-1])["title"] in ln)
        assert line.endswith(f": {rating_level(row['history_ratings'][-1])}/5")
        assert f"Candidate: {b.item_view(row['target'])['title']}" in text
    unrated = dict(row, target_rating=None)
    with pytest.raises(GenrecError, match="rating column"):
        b.task.examples(unrated, random.Random(0), data.users)


def test_mixed_model_card_and_templates(mixed_model):
    card = json.loads((mixed_model / "genrec.json").read_text())
    assert list(card["tasks"]) == TASKS and card["prompt"]["task"] == "next_item"
    for task, prompt in card["tasks"].items():
        assert (mixed_model / prompt["template"]).is_file() and prompt["task"] == task
    assert card["train_examples"] >= 16  # 4 steps x batch 4, shared between the tasks


def test_one_mixed_model_answers_every_task(mixed_model, tiny_data):
    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query

    rec = Recommender(mixed_model)
    assert rec.history_prompts.cfg.task == "next_item" and rec.request_prompts.cfg.task == "request"
    data = load_prepared(tiny_data)
    row = data.split("test")[0]
    req = Query(history=row["history"], ratings=row["history_ratings"])
    recs = rec.recommend([req, Query(text="Something with genres: Comedy")], k=5)
    for r in recs:
        assert len(r.items) == 5 and all(x.item_id in data.catalog for x in r.items)
    assert recs[0].items != recs[1].items  # two different prompts
    cands = [row["target"], *list(data.catalog)[:3]]
    p_yes = rec.score("preference", [req], [cands])[0]
    stars = rec.score("rating", [req], [cands])[0]
    assert all(0 < p < 1 for p in p_yes) and all(1 <= s <= 5 for s in stars)
    assert len(set(stars)) > 1  # depends on the candidate


def test_expected_rating_is_the_digit_softmax_mean(mixed_model, tiny_data):
    import torch

    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query

    rec = Recommender(mixed_model)
    b = rec.builders["rating"]
    data = load_prepared(tiny_data)
    row = data.split("test")[1]
    got = rec.score("rating", [Query(history=row["history"], ratings=row["history_ratings"])], [[row["target"]]])[0][0]
    ids = b.encode(row["history"], candidate=row["target"], history_ratings=row["history_ratings"])
    with torch.no_grad():
        logits = rec.model(torch.tensor([ids])).logits[0, -1]
    p = torch.softmax(logits[list(b.task.answer_ids())].float(), -1)
    assert got == pytest.approx(float((p * torch.arange(1, 6)).sum()), abs=1e-4)


def test_evaluate_rating_beside_mean_baselines(mixed_model, tiny_data, tmp_path):
    r = CliRunner().invoke(main, ["evaluate", "--model", str(mixed_model), "--task", "rating", "--max-users", "10",
                                  "-o", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert rep["task"] == "rating" and set(rep["results"]) == {"genrec", "global_mean", "user_mean", "item_mean"}
    # the user-mean baseline, recomputed by hand from the users file; genrec's MAE and RMSE from its own scores
    data = load_prepared(tiny_data)
    lines = [json.loads(x) for x in (tmp_path / "ev" / "scores.jsonl").read_text().splitlines()]
    errs = [abs(sum(data.users[ln["user_id"]]["ratings"][:-1]) / (len(data.users[ln["user_id"]]["ratings"]) - 1)
                - ln["labels"][0]) for ln in lines]
    assert rep["results"]["user_mean"]["MAE"] == pytest.approx(sum(errs) / len(errs))
    own = [ln["scores"][0] - ln["labels"][0] for ln in lines]
    assert rep["results"]["genrec"]["MAE"] == pytest.approx(sum(map(abs, own)) / len(own))
    assert rep["results"]["genrec"]["RMSE"] == pytest.approx((sum(e * e for e in own) / len(own)) ** 0.5)
    r = CliRunner().invoke(main, ["evaluate", "--model", str(mixed_model), "--task", "next_item_reason"])
    assert r.exit_code == 2 and "not trained for task 'next_item_reason'" in r.output


def test_evaluate_other_tasks_of_the_mixed_model(mixed_model, tmp_path):
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation

    pref = run_evaluation(EvaluateConfig(model=str(mixed_model), task="preference", max_users=6,
                                         output=str(tmp_path / "p")), log=lambda m: None)
    lines = [json.loads(x) for x in (tmp_path / "p" / "scores.jsonl").read_text().splitlines()]
    pos = [s for ln in lines for s, y in zip(ln["scores"], ln["labels"]) if y]
    neg = [s for ln in lines for s, y in zip(ln["scores"], ln["labels"]) if not y]
    assert pref["results"]["genrec"]["AUC"] == pytest.approx(
        sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg)))
    cold = run_evaluation(EvaluateConfig(model=str(mixed_model), task="request", max_users=6, ks=[5],
                                         baselines=["popular"], output=str(tmp_path / "r")), log=lambda m: None)
    lines = [json.loads(x) for x in (tmp_path / "r" / "recommendations.jsonl").read_text().splitlines()]
    assert cold["task"] == "request" and len(lines) == 6
    assert cold["results"]["genrec"]["HR@5"] == pytest.approx(sum(x["target"] in x["recommended"][:5]
                                                                  for x in lines) / 6)


def test_rating_needs_rated_data(tmp_path, tiny_raw):
    import csv

    from genrec.config import DataConfig
    from genrec.data.prepare import prepare
    from genrec.prompts.sequence import make_builder
    from genrec.train.examples import build_examples
    from genrec.config import PromptConfig
    from genrec.items.index import ItemIndex
    from genrec.model_dir import load_tokenizer, resolve_base_model

    src = tmp_path / "norating.csv"
    with open(tiny_raw[0], newline="") as fh, open(src, "w", newline="") as out:
        w = csv.writer(out)
        for row in csv.reader(fh):
            w.writerow([row[0], row[1], row[3]])
    prepare(DataConfig(interactions=str(src), catalog=str(tiny_raw[1]), output=str(tmp_path / "d"),
                       min_item_interactions=1), log=lambda m: None)
    data = load_prepared(tmp_path / "d")
    assert "ratings" not in next(iter(data.users.values()))
    b = make_builder(load_tokenizer(resolve_base_model("default")), PromptConfig(task="rating"), data.catalog,
                     ItemIndex.build(list(data.catalog.values())))
    ex, skipped = build_examples(b, data.split("train"), 5, 0, data.users)
    assert ex == [] and skipped == 5


def test_zero_shot_transfer_recommends_from_the_target_catalog(tiny_model, other_data, tmp_path):
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation

    target = load_prepared(other_data)
    rep = run_evaluation(EvaluateConfig(model=str(tiny_model), data=str(other_data), max_users=5, ks=[5],
                                        baselines=["popular"], output=str(tmp_path / "ev")), log=lambda m: None)
    assert rep["catalog_transfer"] is True and rep["catalog_items"] == len(target.catalog)
    lines = [json.loads(x) for x in (tmp_path / "ev" / "recommendations.jsonl").read_text().splitlines()]
    assert all(i in target.catalog for ln in lines for i in ln["recommended"])
    assert rep["results"]["genrec"]["validity"] == 1.0


def test_codes_do_not_transfer(semantic_model, other_data):
    from genrec.infer.recommender import Recommender

    rec = Recommender(semantic_model)
    with pytest.raises(GenrecError, match="only title models transfer"):
        rec.use_data(load_prepared(other_data))


def test_init_from_continues_the_given_adapter(tiny_model, other_data, tmp_path, semantic_model):
    from safetensors.torch import load_file

    from conftest import tiny_sft_config
    from genrec.train.recipe import train

    out = tmp_path / "t"
    train(tiny_sft_config(other_data, out, init_from=str(tiny_model), max_steps=1, learning_rate=1e-9,
                          save_steps=100), log=lambda m: None)
    card = json.loads((out / "genrec.json").read_text())
    assert card["init_from"] == str(tiny_model.resolve())
    before = load_file(str(tiny_model / "adapter_model.safetensors"))
    after = load_file(str(out / "adapter_model.safetensors"))
    b_keys = [k for k in before if "lora_B" in k]
    assert b_keys and set(after) == set(before)
    assert any(before[k].abs().max() > 0 for k in b_keys)  # a fresh adapter would start with lora_B = 0
    for k in b_keys:
        assert (after[k] - before[k]).abs().max() < 1e-5
    with pytest.raises(GenrecError, match="item_id=title"):
        train(tiny_sft_config(other_data, tmp_path / "x", init_from=str(semantic_model)), log=lambda m: None)
    with pytest.raises(GenrecError, match="not a genrec model"):
        train(tiny_sft_config(other_data, tmp_path / "y", init_from=str(tmp_path)), log=lambda m: None)


def test_each_task_states_its_rules_once(tokenizer, tiny_data):
    """The task protocol (tasks.py): every shipped template's task binds to its class, each task answers in
    exactly one way (writes an item, scores a candidate or ranks the retriever's list), a template of your own
    under another name follows next_item's rules, and a rerank example's answer is the target's label."""
    from genrec.config import PromptConfig
    from genrec.items.index import ItemIndex
    from genrec.prompts.builder import PROMPTS_DIR
    from genrec.prompts.tasks import Preference, Rating, RequestTask, Rerank, Task
    from genrec.prompts.sequence import make_builder

    data = load_prepared(tiny_data)
    index = ItemIndex.build(list(data.catalog.values()))
    kinds = {}
    for name in sorted(p.stem for p in PROMPTS_DIR.glob("*.j2") if p.stem != "sequence"):
        t = make_builder(tokenizer, PromptConfig(task=name, max_prompt_tokens=600), data.catalog, index).task
        assert t.name == name and [t.writes_items, t.scores_candidates, t.ranks_candidates].count(True) == 1
        kinds[name] = type(t)
    assert kinds == {"next_item": Task, "next_item_reason": Task, "request": RequestTask, "preference": Preference,
                     "rating": Rating, "rerank": Rerank}
    own = make_builder(tokenizer, PromptConfig(task="my_task", template=str(PROMPTS_DIR / "next_item.j2")),
                       data.catalog, index)
    assert type(own.task) is Task and own.task.name == "my_task"
    b = make_builder(tokenizer, PromptConfig(task="rerank", max_prompt_tokens=900), data.catalog, index)
    row = next(iter(data.split("valid")))
    pool = [i for i in data.catalog if i != row["target"]][:10]
    assert b.task.training_candidates(pool, row["target"], 5, random.Random(3)) is None  # the top 5 miss it
    pool = pool[:3] + [row["target"]] + pool[3:]
    cands = b.task.training_candidates(pool, row["target"], 5, random.Random(3))
    assert sorted(cands) == sorted(pool[:5])  # the top 5 as they are, shuffled
    prompt, answer = b.task.example(row, cands)
    assert answer == [b.task.label_ids(5)[cands.index(row["target"])], b.eos_id] and len(prompt) > 20
    with pytest.raises(GenrecError, match="retriever"):
        b.task.examples(row, random.Random(0))
    assert Rating.value(None, [0, 0, 0, 0, 1.0]) == 5 and Preference.value(None, [0.25, 0.75]) == 0.25
