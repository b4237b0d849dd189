"""`genrec generate` end to end on a real fine-tuned model: output format, skipping policy, resume, reasons."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from genrec.cli import main
from genrec.errors import GenrecError


def run_generate(model: Path, users: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["generate", "--model", str(model), "--users", str(users), "--out", str(out),
                                     "--k", "3", *extra])


def test_generate_jsonl(tmp_path, tiny_model, tiny_data):
    from genrec.data.prepared import load_prepared

    data = load_prepared(tiny_data)
    uid = next(iter(data.users))
    users = tmp_path / "users.jsonl"
    users.write_text("\n".join(json.dumps(o) for o in [
        {"user_id": uid},
        {"history": data.users[uid]["items"][:3], "context": {"device": "phone"}},
        {"user_id": "no-such-user"},
        {"history": ["no-such-item"]},
        {"history": []},
    ]) + "\n")
    out = tmp_path / "recs.jsonl"
    res = run_generate(tiny_model, users, out)
    assert res.exit_code == 0, res.output
    assert res.output.count("warning: skipped") == 2
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["user_id"] == uid and [r["rank"] for r in first["recommendations"]] == [1, 2, 3]
    for line in lines:
        for r in line["recommendations"]:
            assert r["item_id"] in data.catalog and r["title"] == data.catalog[r["item_id"]]["title"]
    assert not {r["item_id"] for r in first["recommendations"]} & set(data.users[uid]["items"])
    # `genrec show` prints the first users as short tables of titles, in file order
    shown = CliRunner().invoke(main, ["show", str(out), "--users", "2", "--k", "2"])
    assert shown.exit_code == 0, shown.output
    text = shown.output.splitlines()
    assert text[0] == f"user {uid}:" and "line 2 (a history):" in text and "line 3" not in shown.output
    titles = [ln.split(maxsplit=2)[-1] for ln in text if ln[:4].strip() in ("1", "2")]
    assert titles == [r["title"] for line in lines[:2] for r in line["recommendations"][:2]]
    for bad, needle in ((tmp_path / "nothing.jsonl", "does not exist"), (users, "holds no `genrec generate` output")):
        r = CliRunner().invoke(main, ["show", str(bad)])
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output
    assert lines[2]["fallback"] == "popular"  # documented empty-history policy
    assert first["settings"]["k"] == 3
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["skipped"] == 2 and summary["written"] == 3


def test_strict_makes_unknown_ids_errors(tmp_path, tiny_model):
    users = tmp_path / "u.jsonl"
    users.write_text('{"user_id": "no-such-user"}\n')
    out = tmp_path / "o.jsonl"
    res = run_generate(tiny_model, users, out, "--strict")
    assert res.exit_code == 2 and "unknown user_id" in res.output and not out.exists()


@pytest.mark.parametrize("content,needle", [
    ("", "is empty"),
    ("{not json\n", "invalid JSON"),
    ('[1, 2]\n', "expected a JSON object"),
])
def test_bad_users_file(tmp_path, tiny_model, content, needle):
    users = tmp_path / "u.jsonl"
    users.write_text(content)
    res = run_generate(tiny_model, users, tmp_path / "o.jsonl")
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output


def test_csv_users_and_resume(tmp_path, tiny_model, tiny_data):
    from genrec.data.prepared import load_prepared

    uids = list(load_prepared(tiny_data).users)[:3]
    users = tmp_path / "u.csv"
    users.write_text("user_id\n" + "\n".join(uids) + "\n")
    out = tmp_path / "o.jsonl"
    # A crashed run left two lines (one torn) in the partial file: --resume keeps the whole one only.
    res = run_generate(tiny_model, users, out)
    full = out.read_text().splitlines()
    partial = tmp_path / "o.jsonl.partial"
    partial.write_text(full[0] + "\n" + full[1][:20] + "\n")
    out.unlink()
    res = run_generate(tiny_model, users, out, "--resume")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["resumed"] == 1 and summary["generated"] == 2
    assert sorted(json.loads(x)["user_id"] for x in out.read_text().splitlines()) == sorted(uids)
    assert not partial.exists()
    # An existing output is refused without --resume/--overwrite, and left as it was
    before = out.read_text()
    res = run_generate(tiny_model, users, out)
    assert res.exit_code == 2 and "already exists" in res.output and out.read_text() == before
    # --resume on a finished output keeps every line; --overwrite generates them all again
    res = run_generate(tiny_model, users, out, "--resume")
    assert res.exit_code == 0 and json.loads(res.output.strip().splitlines()[-1])["generated"] == 0
    assert out.read_text() == before
    res = run_generate(tiny_model, users, out, "--overwrite")
    assert res.exit_code == 0 and json.loads(res.output.strip().splitlines()[-1])["generated"] == 3


def test_resume_reads_the_partial_file_before_replacing_it(tmp_path, tiny_model, tiny_data):
    """A failure after --resume has read the partial file (here: a users file naming an unknown user, --strict)
    leaves the partial file as it was: it is never truncated before it has been read and rewritten whole."""
    from genrec.data.prepared import load_prepared

    uids = list(load_prepared(tiny_data).users)[:2]
    users = tmp_path / "u.jsonl"
    users.write_text("".join(json.dumps({"user_id": u}) + "\n" for u in uids))
    out = tmp_path / "o.jsonl"
    assert run_generate(tiny_model, users, out).exit_code == 0
    partial = tmp_path / "o.jsonl.partial"
    kept = out.read_text().splitlines()[0] + "\n"
    partial.write_text(kept)
    out.unlink()
    users.write_text(users.read_text() + json.dumps({"user_id": "nobody"}) + "\n")
    res = run_generate(tiny_model, users, out, "--resume", "--strict")
    assert res.exit_code == 2 and "unknown user_id" in res.output
    assert partial.read_text() == kept and not out.exists()


def test_missing_model_dir(tmp_path):
    users = tmp_path / "u.jsonl"
    users.write_text('{"history": ["1"]}\n')
    res = run_generate(tmp_path / "nope", users, tmp_path / "o.jsonl")
    assert res.exit_code == 2 and "not a genrec model directory" in res.output


def test_reasons_require_a_reason_model(tmp_path, tiny_model):
    users = tmp_path / "u.jsonl"
    users.write_text('{"history": ["1"]}\n')
    res = run_generate(tiny_model, users, tmp_path / "o.jsonl", "--with-reasons")
    assert res.exit_code == 2 and "without reasons" in res.output


def test_reasons_never_change_the_items(tmp_path, tiny_data):
    from conftest import tiny_sft_config

    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query
    from genrec.train.recipe import train

    cfg = tiny_sft_config(tiny_data, tmp_path / "r", max_steps=2, save_steps=100)
    cfg.prompt.task = "next_item_reason"
    train(cfg, log=lambda m: None)
    rec = Recommender(tmp_path / "r")
    assert rec.with_reasons
    hist = list(rec.catalog)[:2]
    req = [Query(history=hist, seen=set(hist))]
    plain = rec.recommend(req, k=3)[0].items
    with_r = rec.recommend(req, k=3, with_reasons=True)[0].items
    assert [r.item_id for r in plain] == [r.item_id for r in with_r]
    assert all(isinstance(r.reason, str) for r in with_r)
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation

    rep = run_evaluation(EvaluateConfig(model=str(tmp_path / "r"), max_users=3, baselines=[], with_reasons=True,
                                        output=str(tmp_path / "ev")), log=lambda m: None)
    g = rep["reason_grounding"]
    assert g["reasons"] == 3 and all(0 <= g[k] <= 1 for k in ("non_catalog_title", "unsupported_attribute"))
    assert "Reasons (top-1 item per user)" in (tmp_path / "ev" / "metrics.md").read_text()


def test_reason_grounding_flags_invented_titles_and_attributes():
    from genrec.metrics import reason_grounding

    catalog = {"1": {"title": "Heat (1995)", "attrs": {"genres": "Action|Crime"}},
               "2": {"title": "Toy Story (1995)", "attrs": {"genres": "Animation|Comedy"}},
               "3": {"title": "Alien (1979)", "attrs": {"genres": "Horror|Sci-Fi"}},
               "4": {"title": "Matrix, The (1999)", "attrs": {"genres": "Action|Sci-Fi"}}}
    cases = [
        ("Because you recently enjoyed Toy Story (1995), and this is an action title.", "1", ["2"]),  # grounded
        ("Because you loved Jurassic Park (1993).", "1", ["2"]),  # a title outside the catalog
        ("A horror classic like you enjoy.", "1", ["2"]),  # horror: neither the item's nor the history's
        ("A comedy pick.", "1", ["2"]),  # comedy comes from the history: supported
        ("Because of Matrix, The (1999) in your history: both Sci-Fi.", "3", ["4"]),  # a title with a comma
        ("Because of Matrix, The (2003) in your history.", "3", ["4"]),  # no such title, though "matrix" is one's
    ]
    g = reason_grounding(cases, catalog)
    assert g["reasons"] == 6
    assert g["non_catalog_title"] == pytest.approx(2 / 6)
    assert g["unsupported_attribute"] == pytest.approx(1 / 6)
    assert g["mentions_history"] == pytest.approx(2 / 6)


def test_popularity_penalty_recommends_less_popular_items(recommender, tiny_data):
    from genrec.data.prepared import load_prepared
    from genrec.infer.query import Query

    data = load_prepared(tiny_data)
    reqs = [Query(history=r["history"], seen=set(r["history"])) for r in list(data.split("test"))[:6]]
    counts = recommender.catalog.counts

    def mean_count(results):
        items = [x.item_id for res in results for x in res.items]
        assert len(items) == 6 * 10
        return sum(counts.get(i, 0) for i in items) / len(items)

    plain = recommender.recommend(reqs, k=10)
    assert recommender.recommend(reqs, k=10, popularity_penalty=0.0) == plain
    strong = recommender.recommend(reqs, k=10, popularity_penalty=2.0)
    assert mean_count(strong) < mean_count(plain)
    with pytest.raises(GenrecError, match="popularity penalty"):
        recommender.recommend(reqs, k=10, popularity_penalty=-1)


def test_text_match_ranks_by_log_p_plus_the_request_items_cosine(talking_model):
    """`text_match=w` on a model that reads request text: each item's score is its log-probability plus
    w x (cosine(request, item text) - 1), MiniLM reading both; at a large w the top item is the request's nearest
    item by text; requests without text, or at w = 0, are searched as before; w < 0 is a one-line error."""
    import torch

    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.items.text import item_text, text_embeddings

    rec = Recommender(talking_model)
    ids = rec.index.item_ids
    first = ids[0]
    texts = ["something with a twist", "an old film about the sea"]
    reqs = [Query(history=[first], text=t, seen={first}) for t in texts] + [Query(history=[first], seen={first})]
    n = len(ids) - 1
    plain = rec.recommend(reqs, k=n, text_match=0.0)
    matched = rec.recommend(reqs, k=n, text_match=3.0)
    # no words to match: the same list (scores within a padded batch's float noise)
    alone, batched = ({x.item_id: x.score for x in r.items} for r in (matched[2], plain[2]))
    assert alone.keys() == batched.keys() and max(abs(alone[i] - batched[i]) for i in alone) < 1e-3
    emb = torch.from_numpy(text_embeddings([item_text(rec.catalog[i]) for i in ids]))
    for text, p, m in zip(texts, plain, matched):
        cos = dict(zip(ids, (torch.from_numpy(text_embeddings([text])) @ emb.t())[0].tolist()))
        logp = {x.item_id: x.score for x in p.items}
        assert {x.item_id for x in m.items} == set(logp) and len(m.items) == n
        assert all(abs(x.score - (logp[x.item_id] + 3.0 * (cos[x.item_id] - 1))) < 1e-3 for x in m.items)
        assert [x.score for x in m.items] == sorted((x.score for x in m.items), reverse=True)
        assert [x.item_id for x in m.items][:5] != [x.item_id for x in p.items][:5]  # the words moved the list
        strong = rec.recommend([Query(history=[first], text=text, seen={first})], k=1, text_match=1e4)[0]
        assert strong.items[0].item_id == max((c, i) for i, c in cos.items() if i != first)[1]
    with pytest.raises(GenrecError, match=r"--text-match must be a finite number >= 0, got -1"):
        rec.recommend(reqs, k=3, text_match=-1)


def test_a_next_item_model_answers_a_request_by_matching_its_words(cut_token_model):
    """An item-token model trained without request lines ranks a history + request by the history's log-probability
    (the prompt holds no words) plus w x (cosine - 1); a request alone too; at w = 0 it refuses the text in one
    line, naming both ways to answer it."""
    import torch

    from genrec.infer.query import Query, Search
    from genrec.infer.recommender import Recommender
    from genrec.items.text import item_text, text_embeddings

    rec = Recommender(cut_token_model)
    assert not rec.reads_request_text and rec.answers_text(Search()) and not rec.answers_text(Search(text_match=0))
    ids = rec.index.item_ids
    first, text = ids[0], "an old film about the sea"
    n = len(ids) - 1
    logp = {x.item_id: x.score for x in rec.recommend([Query(history=[first], seen={first})], k=n)[0].items}
    emb = torch.from_numpy(text_embeddings([item_text(rec.catalog[i]) for i in ids]))
    cos = dict(zip(ids, (torch.from_numpy(text_embeddings([text])) @ emb.t())[0].tolist()))
    got = rec.recommend([Query(history=[first], text=text, seen={first})], k=n, text_match=2.0)[0].items
    assert len(got) == n and all(abs(x.score - (logp[x.item_id] + 2.0 * (cos[x.item_id] - 1))) < 1e-3 for x in got)
    assert [x.item_id for x in got][:5] != sorted(logp, key=logp.get, reverse=True)[:5]  # the words moved the list
    alone = rec.recommend([Query(text=text)], k=1, text_match=1e4)[0]
    assert alone.items[0].item_id == max((c, i) for i, c in cos.items())[1]
    with pytest.raises(GenrecError, match=r"not trained to answer request text .*--text-match > 0"):
        rec.recommend([Query(history=[first], text=text)], k=3, text_match=0.0)


def test_history_match_adds_the_content_baselines_cosine_to_log_p(cut_token_model):
    """`history_match=w` on an item-token model: each item's score is its log-probability plus w x (cosine - 1)
    between the mean MiniLM row of the history's item texts and the item's text, computed here from MiniLM apart
    from the code; at a large w the list is the content baseline's; w = 0 changes nothing; w < 0 is refused."""
    import torch

    from genrec.eval.baselines import content_rankings
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.items.text import item_text, text_embeddings

    rec = Recommender(cut_token_model)
    ids = rec.index.item_ids
    history = ids[:3]
    n = len(ids) - len(history)
    req = Query(history=history, seen=set(history))
    logp = {x.item_id: x.score for x in rec.recommend([req], k=n)[0].items}
    assert {x.item_id: x.score for x in rec.recommend([req], k=n, history_match=0.0)[0].items} == logp
    emb = torch.from_numpy(text_embeddings([item_text(rec.catalog[i]) for i in ids]))
    cos = dict(zip(ids, (emb[:3].mean(0) @ emb.t()).tolist()))
    got = rec.recommend([req], k=n, history_match=2.0)[0].items
    assert len(got) == n and all(abs(x.score - (logp[x.item_id] + 2.0 * (cos[x.item_id] - 1))) < 1e-3 for x in got)
    assert [x.item_id for x in got][:5] != sorted(logp, key=logp.get, reverse=True)[:5]  # the texts moved the list
    strong = [x.item_id for x in rec.recommend([req], k=3, history_match=1e4)[0].items]
    assert strong == content_rankings(rec.catalog, [history], [set(history)], 3)[0]
    with pytest.raises(GenrecError, match=r"--history-match must be a finite number >= 0, got -1"):
        rec.recommend([req], k=3, history_match=-1)


def test_tune_fusion_chooses_the_history_match_of_a_model_without_a_retriever(cut_token_model, tmp_path):
    """An item-token model without a retriever: `tune-fusion` searches the whole catalog at each history-match
    weight for validation users, keeps the best in fusion.json (no K, no retriever weight), and recommend then uses
    it for the whole catalog unless asked otherwise; a K asked for (no retriever) is still an error."""
    import shutil

    from genrec.config import FusionConfig
    from genrec.eval.baselines import content_rankings
    from genrec.eval.fusion import tune_fusion
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender

    model = tmp_path / "m"
    shutil.copytree(cut_token_model, model)
    tuned = tune_fusion(FusionConfig(model=str(model), history_weights=[1e4, 0.0], max_users=12), log=lambda m: None)
    assert tuned["candidates"] is None and tuned["weight"] == 0.0 and tuned["users"] == 12
    assert [r["history_match"] for r in tuned["table"]] == [0.0, 1e4]
    best = max(r["NDCG@10"] for r in tuned["table"])
    assert tuned["history_match"] == next(r["history_match"] for r in tuned["table"] if r["NDCG@10"] == best)
    assert json.loads((model / "fusion.json").read_text()) == json.loads(json.dumps(tuned))

    (model / "fusion.json").write_text(json.dumps({**tuned, "history_match": 1e4}))
    rec, plain = Recommender(model), Recommender(cut_token_model)
    history = rec.index.item_ids[:3]
    req = Query(history=history, seen=set(history))
    items = lambda res: [x.item_id for x in res[0].items]  # noqa: E731
    assert items(rec.recommend([req], k=3)) == content_rankings(rec.catalog, [history], [set(history)], 3)[0]
    assert items(rec.recommend([req], k=3, history_match=0.0)) == items(plain.recommend([req], k=3))
    assert items(rec.recommend([req], k=3)) != items(plain.recommend([req], k=3))
    with pytest.raises(GenrecError, match="retriever"):
        rec.recommend([req], k=3, candidates=5)
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation

    for asked, used in ((None, 1e4), (0.0, 0.0)):
        r = run_evaluation(EvaluateConfig(model=str(model), max_users=6, ks=[10], baselines=[], history_match=asked,
                                          output=str(tmp_path / f"ev{used:g}")), log=lambda m: None)
        assert r["history_match"] == used and r["hybrid"] is None


def test_an_item_token_model_explains_each_item_by_its_nearest_history_item(tmp_path, cut_token_model):
    """An item-token model trained without reason lines gives a reason per item: the history item whose output row
    has the largest cosine with the item's (both less the mean item row), and the attribute values both have, and its items are the same as
    without reasons. `genrec generate --with-reasons` writes them, and `evaluate --with-reasons` finds every one
    grounded and naming the history."""
    import torch

    from genrec.config import EvaluateConfig
    from genrec.data.prepared import load_prepared
    from genrec.eval.protocol import run_evaluation
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.metrics import attr_values

    rec = Recommender(cut_token_model)
    assert rec.explains and rec.with_reasons
    builder = rec.history_prompts
    weight = rec.backend.model.get_output_embeddings().weight.detach().clone()
    weight -= weight[[builder.ident(i)[0] for i in rec.index.item_ids]].mean(0)  # rows less the mean item row
    rows = list(load_prepared(rec.card.data).split("test"))[:4]
    reqs = [Query(history=r["history"], seen=set(r["history"])) for r in rows]
    plain = rec.recommend(reqs, k=4)
    told = rec.recommend(reqs, k=4, with_reasons=True)
    named = set()
    for req, a, b in zip(reqs, plain, told):
        assert [p.item_id for p in a.items] == [p.item_id for p in b.items]
        shown = req.history[-builder.cfg.max_history:]
        for p in b.items:
            row = weight[builder.ident(p.item_id)[0]]
            cos = [float(torch.cosine_similarity(row, weight[builder.ident(h)[0]], dim=0)) for h in shown]
            near = shown[max(range(len(shown)), key=lambda j: (cos[j], j))]
            named.add(near)
            assert p.reason.startswith(f"Because of {rec.catalog[near]['title']} in your history")
            mine = {v.lower() for v in attr_values(rec.catalog[p.item_id]["attrs"])}
            theirs = {v.lower() for v in attr_values(rec.catalog[near]["attrs"])}
            said = p.reason.split(": both ")[1].rstrip(".").split(", ") if ": both " in p.reason else []
            assert all(v.lower() in mine & theirs for v in said)
            assert said or not mine & theirs
    assert len(named) > 1  # not always the newest item
    again = rec.recommend(reqs, k=len(rec.catalog) // 2, with_reasons=True, exclude_seen=False)
    back = [(p, r) for r, a in zip(reqs, again) for p in a.items if p.item_id in r.history]
    assert back and all(not p.reason.startswith(f"Because of {p.title} in") for p, _ in back)  # never itself
    alone = rec.recommend([Query(text="something about the sea")], k=2, with_reasons=True)[0]
    assert all(p.reason.startswith("For your request") for p in alone.items)
    users = tmp_path / "u.jsonl"
    users.write_text(json.dumps({"history": reqs[0].history}) + "\n")
    res = run_generate(cut_token_model, users, tmp_path / "o.jsonl", "--with-reasons")
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "o.jsonl").read_text())
    assert [r["reason"] for r in out["recommendations"]] == [p.reason for p in told[0].items[:3]]
    rep = run_evaluation(EvaluateConfig(model=str(cut_token_model), max_users=6, baselines=[], with_reasons=True,
                                        output=str(tmp_path / "ev")), log=lambda m: None)
    g = rep["reason_grounding"]
    assert g["reasons"] == 6 and g["non_catalog_title"] == g["unsupported_attribute"] == 0
    assert g["mentions_history"] == 1.0


def test_request_model_cold_start(tmp_path, tiny_data):
    """A user with no history types what they want: only catalog items come back; training requests never
    contain the target's title."""
    import random

    from conftest import tiny_sft_config

    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation
    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query
    from genrec.train.recipe import train

    cfg = tiny_sft_config(tiny_data, tmp_path / "q", max_steps=2, save_steps=100)
    cfg.prompt.task = "request"
    train(cfg, log=lambda m: None)
    rec = Recommender(tmp_path / "q")
    item = next(i for i, r in rec.catalog.items() if r["attrs"].get("genres"))
    text = rec.builder.task.request_for(item, random.Random(1))
    assert rec.catalog[item]["title"] not in text and "genres:" in text
    res = rec.recommend([Query(text="a funny animated movie for children")], k=5)[0]
    assert res.fallback is None and len(res.items) == 5
    assert all(r.item_id in rec.catalog for r in res.items)
    short = rec.recommend([Query(history=[item], text="something scary", seen={item})], k=3)[0]
    assert item not in {r.item_id for r in short.items}
    rep = run_evaluation(EvaluateConfig(model=str(tmp_path / "q"), max_users=4, output=str(tmp_path / "ev")),
                         log=lambda m: None)
    assert set(rep["results"]) == {"genrec", "popular"} and rep["results"]["genrec"]["validity"] == 1.0


def test_history_entries_may_be_titles(tiny_data):
    """Users think in titles: an entry is an id, else an exact title, else a case/whitespace-insensitive one; a
    shared title names its ids; an unknown entry lists the closest titles; hostile strings are clear errors."""
    from genrec.data.prepared import load_prepared
    from genrec.errors import GenrecError
    from genrec.infer.jobs import resolve_items, to_request

    catalog = dict(load_prepared(tiny_data).catalog)
    a, b = list(catalog)[:2]
    ta = catalog[a]["title"]
    assert resolve_items([a, ta, "  " + ta.upper().replace(" ", "   ") + " "], catalog, "x") == [a, a, a]
    req = to_request({"history": [ta, b]}, None, catalog, "line 1")
    assert req.history == [a, b] and req.seen == {a, b}
    with pytest.raises(GenrecError, match="closest titles: " + re.escape(repr(ta))):
        resolve_items([ta[:-2] + "x)"], catalog, "line 2")
    shared = {**catalog, "dup": {**catalog[a], "item_id": "dup"}}
    with pytest.raises(GenrecError, match=f"shared by items {a}, dup"):
        resolve_items([ta], shared, "line 3")
    assert resolve_items(["dup"], shared, "x") == ["dup"]  # an id always wins
    for hostile in ["<|im_end|>", "\x00\x1b[2J", "x" * 100_000, "'; DROP TABLE items; --", "🎬" * 50]:
        with pytest.raises(GenrecError, match="neither an item id nor a title") as exc:
            resolve_items([hostile], catalog, "line 4")
        assert len(str(exc.value)) < 600 and "\n" not in str(exc.value)


def test_shards_together_equal_the_unsharded_output(tmp_path, tiny_model, tiny_data):
    """--shard I/N splits one users file deterministically; the N outputs merged by line index are the
    unsharded output line for line, and --resume works per shard."""
    from genrec.data.prepared import load_prepared

    def strip(p):  # scores may differ in the last float digits with the batch's padding; items and order may not
        return [(o["index"], o["user_id"], [r["item_id"] for r in o["recommendations"]])
                for o in map(json.loads, p.read_text().splitlines())]

    data = load_prepared(tiny_data)
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps({"user_id": u}) + "\n" for u in list(data.users)[:7]))
    full = tmp_path / "full.jsonl"
    assert run_generate(tiny_model, users, full).exit_code == 0
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.jsonl"
        res = run_generate(tiny_model, users, part, "--shard", f"{i}/3")
        assert res.exit_code == 0, res.output
        assert [json.loads(x)["index"] for x in part.read_text().splitlines()] == list(range(i + 1, 8, 3))
        parts.append(part)
    # resume one shard from a partial file holding its first line
    first = parts[1].read_text().splitlines()[0]
    redo = tmp_path / "redo.jsonl"
    (tmp_path / "redo.jsonl.partial").write_text(first + "\n")
    res = run_generate(tiny_model, users, redo, "--shard", "1/3", "--resume")
    assert res.exit_code == 0 and json.loads(res.output.strip().splitlines()[-1])["resumed"] == 1
    assert strip(redo) == strip(parts[1])
    merged = tmp_path / "merged.jsonl"
    res = CliRunner().invoke(main, ["merge-shards", *map(str, reversed(parts)), "--out", str(merged)])
    assert res.exit_code == 0, res.output
    assert strip(merged) == strip(full)
    for bad in ("3/3", "x/2", "1"):
        res = run_generate(tiny_model, users, tmp_path / "bad.jsonl", "--shard", bad)
        assert res.exit_code == 2 and "--shard" in res.output
    res = CliRunner().invoke(main, ["merge-shards", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "m2")])
    assert res.exit_code == 2 and "overlap" in res.output


def test_recommend_one_user_at_the_terminal(tiny_model, tiny_data):
    """`genrec recommend`: a table with the history above it; --json prints what `generate` writes for that user;
    titles work as history; no input is a one-line error."""
    from genrec.data.prepared import load_prepared

    data = load_prepared(tiny_data)
    uid = next(iter(data.users))
    res = CliRunner().invoke(main, ["recommend", "--model", str(tiny_model), "--user", uid, "--k", "3"])
    assert res.exit_code == 0, res.output
    last = data.catalog[data.users[uid]["items"][-1]]["title"]
    assert f"  - {last}" in res.output and "rank" in res.output
    js = CliRunner().invoke(main, ["recommend", "--model", str(tiny_model), "--user", uid, "--k", "3", "--json"])
    assert js.exit_code == 0, js.output
    line = json.loads(js.stdout.strip().splitlines()[-1])
    titles = [r["title"] for r in line["recommendations"]]
    assert len(titles) == 3 and all(t in res.output for t in titles)
    a, b = list(data.catalog)[:2]
    by_title = CliRunner().invoke(main, ["recommend", "--model", str(tiny_model), "--json", "--k", "2",
                                         "--history", data.catalog[a]["title"], "--history", b])
    by_id = CliRunner().invoke(main, ["recommend", "--model", str(tiny_model), "--json", "--k", "2",
                                      "--history", a, "--history", b])
    assert by_title.exit_code == 0 and json.loads(by_title.stdout.strip().splitlines()[-1])["recommendations"] == \
        json.loads(by_id.stdout.strip().splitlines()[-1])["recommendations"]
    none = CliRunner().invoke(main, ["recommend", "--model", str(tiny_model)])
    assert none.exit_code == 2 and "give --user, --history or --request" in none.output


def test_a_checkpoint_can_stand_in_for_the_final_adapter(tiny_model, recommender, tmp_path):
    """Recommender(adapter=checkpoint-N) (evaluate adapter=...): the last checkpoint is the final adapter, an
    earlier one another model; a directory without an adapter is a clear error."""
    from genrec.errors import GenrecError
    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query

    req = [Query(history=["1", "260"], seen={"1", "260"})]
    final = recommender.recommend(req, k=3)[0].items
    last = Recommender(tiny_model, adapter=tiny_model / "checkpoint-6").recommend(req, k=3)[0].items
    early = Recommender(tiny_model, adapter=tiny_model / "checkpoint-3").recommend(req, k=3)[0].items
    assert [(r.item_id, r.score) for r in last] == [(r.item_id, r.score) for r in final]
    assert [r.score for r in early] != [r.score for r in final]
    with pytest.raises(GenrecError, match="not a LoRA checkpoint"):
        Recommender(tiny_model, adapter=tmp_path)


def test_batches_of_similar_length_change_no_result(recommender, tiny_data):
    """Users are batched by prompt length, longest first (little left padding); each user still gets the items
    and scores a batch of one gives."""
    from genrec.infer.jobs import length_batches
    from genrec.data.prepared import load_prepared
    from genrec.infer.query import Query

    data = load_prepared(tiny_data)
    reqs = [Query(history=r["history"][-n:]) for n, r in zip((1, 4, 2, 6, 3), list(data.split("test")))]
    batches = length_batches(recommender, reqs, 2)
    assert sorted(n for b in batches for n in b) == list(range(5)) and [len(b) for b in batches] == [2, 2, 1]
    lengths = [len(recommender.route(r).encode(r.history)) for r in reqs]
    in_order = [lengths[n] for b in batches for n in b]
    assert in_order == sorted(lengths, reverse=True) and len(set(lengths)) > 1
    together = {n: res for b in batches for n, res in zip(b, recommender.recommend([reqs[n] for n in b], k=5))}
    for n, req in enumerate(reqs):
        alone = recommender.recommend([req], k=5)[0].items
        assert [x.item_id for x in alone] == [x.item_id for x in together[n].items]
        assert [x.score for x in alone] == pytest.approx([x.score for x in together[n].items],
                                                             abs=1e-3)


def test_explained_reasons_on_other_item_token_recipes(tmp_path, tiny_data):
    """Explained reasons come from the history prompts' `reason` block whichever builder searched: an item-token
    sequence model with a request task answers a request + history with reasons; an item-token model of the prefix
    objective (its template has no `reason` block) refuses --with-reasons in one line."""
    from conftest import tiny_sft_config

    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.train.recipe import train

    both = tiny_sft_config(tiny_data, tmp_path / "both", item_id="token", objective="sequence", max_steps=1,
                           save_steps=100, layers=2, tasks=["next_item", "request"], item_text="init")
    train(both, log=lambda m: None)
    rec = Recommender(tmp_path / "both")
    a, b = list(rec.catalog)[:2]
    assert rec.explains and rec.route(Query(history=[a, b], text="x")) is not rec.history_prompts
    got = rec.recommend([Query(history=[a, b], text="something funny", seen={a, b})], k=3, with_reasons=True)[0]
    assert all(p.reason.startswith((f"Because of {rec.catalog[a]['title']} in",
                                    f"Because of {rec.catalog[b]['title']} in")) for p in got.items)
    prefix = tiny_sft_config(tiny_data, tmp_path / "prefix", item_id="token", objective="prefix", max_steps=1,
                             save_steps=100, layers=2, item_text="init")
    train(prefix, log=lambda m: None)
    rec = Recommender(tmp_path / "prefix")
    assert not rec.explains and not rec.with_reasons
    with pytest.raises(GenrecError, match="trained without reasons"):
        rec.recommend([Query(history=[a, b])], k=3, with_reasons=True)
