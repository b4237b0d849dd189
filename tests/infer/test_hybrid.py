"""Collaborative retrieval + LLM ranking, on the real tiny model: SASRec in the model directory proposes, the
rerank task's verbalizer decides with one forward pass, a generative model can search within the candidates."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch

from genrec.errors import GenrecError


@pytest.fixture(scope="module")
def reranker(rerank_model):
    from genrec.infer.recommender import Recommender

    return Recommender(rerank_model)


def a_user(rec):
    from genrec.data.prepared import load_prepared

    data = load_prepared(rec.card.data)
    uid = sorted(data.users)[3]
    return data, uid, data.users[uid]["items"][:-1]


def test_labels_are_distinct_single_tokens(reranker):
    b = reranker.rerank_prompts
    ids = b.task.label_ids(26)
    assert len(set(ids)) == 26
    assert all(b.plain(c) == [i] for c, i in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", ids))
    with pytest.raises(GenrecError):
        b.task.label_ids(27)


def test_retriever_is_saved_in_and_loaded_from_the_model_directory(rerank_model, reranker, tiny_data):
    from genrec.data.prepared import load_prepared
    from genrec.infer.retriever import Retriever

    assert (rerank_model / "retriever" / "sasrec.safetensors").is_file()
    card = json.loads((rerank_model / "genrec.json").read_text())
    assert card["retriever"]["kind"] == "sasrec" and card["retriever"]["facts"]["steps"] > 0
    data = load_prepared(tiny_data)
    hists = [u["items"][:-1] for u in list(data.users.values())[:5]]
    again = Retriever.load(rerank_model)
    assert (reranker.retriever.scores(hists) == again.scores(hists)).all()
    # the retriever ranks, it does not copy the catalog order: users get different lists
    tops = {tuple(i for i, _ in t) for t in again.top(hists, [set(h) for h in hists], 5)}
    assert len(tops) > 1


def test_training_labels_are_uniform_and_candidates_are_the_retrievers(rerank_model, reranker, tiny_data):
    """A training list is K consecutive items of the retriever's ranking for the validation history, holding the
    target (the top K when it is there), shuffled: the target's label is uniform over the K labels (no position to
    learn), and the target is never inserted among items ranked far above it (an inserted target is the odd one
    out, a shortcut that ranks real targets below chance)."""
    import numpy as np

    from genrec.data.prepared import load_prepared
    from genrec.train.examples import rerank_examples

    data = load_prepared(tiny_data)
    b = reranker.rerank_prompts
    k = b.cfg.rerank_candidates
    rows = data.split("valid")
    ex, skipped, missed = rerank_examples(b, data, reranker.retriever, 10**6, seed=3, copies=40)
    assert skipped == 0 and len(ex) == 40 * len(rows)
    labels = Counter(e["input_ids"][-2] for e in ex)  # the answer: label, then EOS
    assert set(labels) == set(b.task.label_ids(k))
    expected = len(ex) / k
    assert max(abs(c - expected) for c in labels.values()) < 0.25 * expected
    # each list: a run of consecutive ranks of the retriever's ranking holding the target (its top K when it is
    # there), never the target inserted under items ranked far above it
    retr, rng, outside = reranker.retriever, random.Random(0), 0
    for row in rows:
        scores = retr.scores([row["history"]], [set(row["history"]) - {row["target"]}])[0]
        order = [retr.items[j] for j in np.lexsort((np.arange(len(scores)), -scores)) if np.isfinite(scores[j])]
        cands = b.task.training_candidates(order, row["target"], k, rng)
        ranks = sorted(order.index(i) for i in cands)
        assert row["target"] in cands and ranks == list(range(ranks[0], ranks[0] + k))
        outside += order.index(row["target"]) >= k
        assert (ranks[0] == 0) == (order.index(row["target"]) < k)
    assert missed == outside


def test_verbalizer_equals_a_direct_forward_pass(reranker):
    from genrec.infer.query import Query
    from genrec.infer.hybrid import rerank

    data, uid, hist = a_user(reranker)
    req = Query(user_id=uid, history=hist, seen=set(hist))
    res = rerank(reranker, [req], k=5)[0][0]
    b = reranker.rerank_prompts
    k = b.cfg.rerank_candidates
    pool = [i for i, _ in reranker.retriever.top([hist], [set(hist)], k)[0]]
    ids = b.encode(hist, candidates=pool)
    with torch.no_grad():
        logits = reranker.model(torch.tensor([ids])).logits[0, -1].float()
    lp = torch.log_softmax(logits[b.task.label_ids(len(pool))], -1)
    want = sorted(range(len(pool)), key=lambda c: -float(lp[c]))[:5]
    assert [r.item_id for r in res.items] == [pool[c] for c in want]
    for r, c in zip(res.items, want):
        assert r.score == pytest.approx(float(lp[c]), abs=1e-3)


def test_final_list_is_a_permutation_of_the_catalog_minus_exclusions(reranker):
    from genrec.infer.query import Query
    from genrec.infer.hybrid import rerank

    data, uid, hist = a_user(reranker)
    allowed = set(reranker.index.item_ids) - set(hist)
    out = reranker.recommend([Query(user_id=uid, history=hist, seen=set(hist))], k=len(allowed))[0]
    ids = [r.item_id for r in out.items]
    assert len(ids) == len(set(ids)) == len(allowed) and set(ids) == allowed
    k = reranker.rerank_prompts.cfg.rerank_candidates
    pool = [i for i, _ in reranker.retriever.top([hist], [set(hist)], len(allowed))[0]]
    assert set(ids[:k]) == set(pool[:k]) and ids[k:] == pool[k:]  # reranked K, then the retriever's order
    fused = rerank(reranker, [Query(history=hist, seen=set(hist))], k=k, weights=(0.0, 1.0))
    assert {r.item_id for r in fused[1][0].items} == set(pool[:k])


def given_a_retriever(trained, data, where):
    """A copy of `trained` given a retriever (the directory is self-contained: copied in here)."""
    from genrec.data.prepared import load_prepared
    from genrec.infer.retriever import Retriever

    model = where / "m"
    shutil.copytree(trained, model)
    Retriever.train(load_prepared(data), seed=1, max_seconds=10, log=lambda m: None).save(model)
    return model


@pytest.fixture(scope="module")
def with_retriever(tiny_model, tiny_data, tmp_path_factory):
    """The tiny next_item model given a retriever."""
    return given_a_retriever(tiny_model, tiny_data, tmp_path_factory.mktemp("hybrid"))


def test_generation_within_candidates(with_retriever, tmp_path):
    """A next_item model with a retriever searches only the retriever's K; after them the list follows the
    retriever's order."""
    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query

    model = with_retriever
    rec = Recommender(model)
    data, uid, hist = a_user(rec)
    req = Query(user_id=uid, history=hist, seen=set(hist))
    pool = [i for i, _ in rec.retriever.top([hist], [set(hist)], 12)[0]]
    out = [r.item_id for r in rec.recommend([req], k=12, candidates=5)[0].items]
    assert set(out[:5]) == set(pool[:5]) and out[5:] == [i for i in pool if i not in out[:5]][:7]
    with pytest.raises(GenrecError, match="catalog size"):
        rec.recommend([req], k=5, candidates=10**6)

    # fused with the retriever: every one of the K is scored by the LLM, then ranked by
    # log p_LLM + w * log softmax(retriever scores over the K), recomputed here from both models' own numbers
    K = 6
    alone = rec.recommend([req], k=K, candidates=K, search="exact")[0].items
    llm = {r.item_id: r.score for r in alone}
    assert set(llm) == set(pool[:K])
    retr = dict(rec.retriever.top([hist], [set(hist)], K)[0])
    prior = torch.log_softmax(torch.tensor([retr[i] for i in pool[:K]], dtype=torch.float64), -1)
    want = sorted(pool[:K], key=lambda i: -(llm[i] + 2.0 * float(prior[pool.index(i)])))
    fused = rec.recommend([req], k=3, candidates=K, retriever_weight=2.0, search="exact")[0].items
    assert [r.item_id for r in fused] == want[:3]
    assert fused[0].score == pytest.approx(llm[want[0]] + 2.0 * float(prior[pool.index(want[0])]), abs=1e-3)
    # a weight far above the LLM's spread gives the retriever's own order back
    top = rec.recommend([req], k=K, candidates=K, retriever_weight=1e4, search="exact")[0].items
    assert [r.item_id for r in top] == pool[:K]

    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation

    r = run_evaluation(EvaluateConfig(model=str(model), max_users=6, ks=[1, 5], candidates=f"retriever:{K}",
                                      baselines=[], output=str(tmp_path / "ev")), log=lambda m: None)
    assert r["hybrid"] == "generation within candidates"
    assert {"genrec", "genrec x sasrec", "sasrec", f"sasrec top-{K} shuffled"} <= set(r["results"])
    assert "genrec x sasrec - sasrec" in r["paired_differences"]


def test_a_reconsumed_target_stays_rankable_for_the_llm_and_the_retriever(with_retriever):
    """`seen` is what is never recommended (None: the history). Evaluation passes the history minus the target, so
    a user's re-consumed target can be ranked by the LLM, within candidates and by the retriever, as it can by the
    baselines; before, the history was excluded on top of `seen` and such users were certain misses for genrec."""
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender

    rec = Recommender(with_retriever)
    data, uid, hist = a_user(rec)
    again = hist[-2]  # consumed before: the "target" here
    n = len(rec.index.item_ids)
    items = lambda res: [r.item_id for r in res[0].items]  # noqa: E731
    keep, m = Query(history=hist, seen=set(hist) - {again}), n - len(set(hist)) + 1
    for settings in ({"candidates": 0}, {"candidates": m, "retriever_weight": 1.0}):
        ranked = items(rec.recommend([keep], k=m, **settings))
        assert again in ranked and not (set(ranked) & (set(hist) - {again}))
        default = items(rec.recommend([Query(history=hist)], k=m - 1, **settings))  # seen None: the history
        assert not set(default) & set(hist)
    assert again in [i for i, _ in rec.retrieved([keep], n, True)[0]]
    assert again not in [i for i, _ in rec.retrieved([Query(history=hist)], n, True)[0]]


def test_tuned_fusion_is_kept_in_the_model_and_used_by_default(with_retriever, tiny_model, tmp_path):
    """`tune-fusion` scores validation users' K candidates once, ranks them for every weight, keeps the best weight
    in fusion.json; generate/evaluate/serve then search within the K, fused with that weight, unless told
    otherwise ("catalog", an explicit weight)."""
    from genrec.config import EvaluateConfig, FusionConfig
    from genrec.eval.fusion import tune_fusion
    from genrec.eval.protocol import run_evaluation
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender

    model = tmp_path / "tuned"
    shutil.copytree(with_retriever, model)
    K = 6
    tuned = tune_fusion(FusionConfig(model=str(model), candidates=f"retriever:{K}", weights=[1e4, 0.0, 1.0],
                                     max_users=12), log=lambda m: None)
    assert json.loads((model / "fusion.json").read_text()) == json.loads(json.dumps(tuned))
    table = {row["weight"]: row for row in tuned["table"]}
    assert sorted(table) == [0.0, 1.0, 1e4] and tuned["users"] == 12 and tuned["split"] == "valid"
    # a weight far above the LLM's spread is the retriever's own order
    assert {m: table[1e4][m] for m in ("NDCG@10", "HR@10")} == tuned["retriever_alone"]
    best = max(r["NDCG@10"] for r in tuned["table"])
    assert table[tuned["weight"]]["NDCG@10"] == best
    assert all(r["NDCG@10"] < best for r in tuned["table"] if r["weight"] < tuned["weight"])  # ties: the smaller

    rec, plain = Recommender(model), Recommender(tiny_model)
    assert rec.fusion["weight"] == tuned["weight"] and rec.fusion["candidates"] == K
    data, uid, hist = a_user(rec)
    req = Query(user_id=uid, history=hist, seen=set(hist))
    items = lambda res: [r.item_id for r in res[0].items]  # noqa: E731
    default = items(rec.recommend([req], k=4))
    assert default == items(rec.recommend([req], k=4, candidates=K, retriever_weight=tuned["weight"]))
    assert set(default) <= {i for i, _ in rec.retriever.top([hist], [set(hist)], K)[0]}
    assert items(rec.recommend([req], k=4, candidates=0)) == items(plain.recommend([req], k=4))  # "catalog"

    r = run_evaluation(EvaluateConfig(model=str(model), max_users=6, ks=[1, 5], baselines=[],
                                      output=str(tmp_path / "ev")), log=lambda m: None)
    assert r["hybrid"] == "generation within candidates" and r["retriever_recall"]["k"] == K
    assert r["fusion"] == {"weight": tuned["weight"], "history_match": 0.0, "source": "tuned on 12 validation users",
                           "candidates": K}
    r = run_evaluation(EvaluateConfig(model=str(model), max_users=6, ks=[1, 5], baselines=[], candidates="catalog",
                                      output=str(tmp_path / "ev2")), log=lambda m: None)
    assert r["hybrid"] is None and "genrec x sasrec" not in r["results"]

    (model / "fusion.json").write_text('{"weight": -1}')
    with pytest.raises(GenrecError, match="fusion file"):
        Recommender(model)


def test_fusion_chooses_k_too_from_one_scoring(with_retriever, tmp_path):
    """Several K: one scoring at the largest K serves every smaller one (a candidate's log-probability does not
    depend on the other candidates), and the (K, w) kept is the table's best, ties going to the smaller w then K."""
    from genrec.config import FusionConfig
    from genrec.eval.fusion import tune_fusion
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.infer.hybrid import candidate_scores, narrowed

    rec = Recommender(with_retriever)
    data, uid, hist = a_user(rec)
    reqs = [Query(user_id=uid, history=hist, seen=set(hist)), Query(history=hist[:-2], seen=set(hist[:-2]))]
    wide, small = candidate_scores(rec, reqs, 10, True, 7), candidate_scores(rec, reqs, 10, True, 3)
    for w, s in zip(wide, small):
        cut = narrowed(w, 3)
        assert cut["items"] == s["items"] and cut["retriever"] == s["retriever"]
        assert cut["llm"] == pytest.approx(s["llm"], abs=1e-4) and cut["rest"][:len(s["rest"])] == s["rest"]

    model = tmp_path / "tuned"
    shutil.copytree(with_retriever, model)
    tuned = tune_fusion(FusionConfig(model=str(model), candidates="retriever:7,3", weights=[0.0, 1e4], max_users=12),
                        log=lambda m: None)
    assert [(r["candidates"], r["weight"]) for r in tuned["table"]] == [(3, 0.0), (3, 1e4), (7, 0.0), (7, 1e4)]
    best = max(r["NDCG@10"] for r in tuned["table"])
    first = next(r for r in sorted(tuned["table"], key=lambda r: (r["weight"], r["candidates"]))
                 if r["NDCG@10"] == best)
    assert (tuned["candidates"], tuned["weight"]) == (first["candidates"], first["weight"])
    assert Recommender(model).fusion["candidates"] == tuned["candidates"]
    # a huge weight is the retriever's own order whatever K is
    assert all({m: r[m] for m in ("NDCG@10", "HR@10")} == tuned["retriever_alone"] for r in tuned["table"]
               if r["weight"] == 1e4)


@pytest.fixture(scope="module")
def token_with_retriever(cut_token_model, tiny_data, tmp_path_factory):
    """The tiny item-token model given a retriever."""
    return given_a_retriever(cut_token_model, tiny_data, tmp_path_factory.mktemp("token-hybrid"))


def test_an_item_token_hybrid_tunes_and_serves_a_history_match_too(token_with_retriever, tmp_path):
    """An item-token model's candidates also carry the history match (1 - the MiniLM cosine between the history's
    mean item text and the item's, recomputed here from MiniLM apart from the code); `tune-fusion` chooses its
    weight h with w on validation users, keeps it in fusion.json, and recommend and evaluate then rank within the
    K by log p + w x log softmax(retriever) - h x that, unless asked otherwise."""
    from genrec.config import EvaluateConfig, FusionConfig
    from genrec.eval.fusion import tune_fusion
    from genrec.eval.protocol import run_evaluation
    from genrec.infer.hybrid import candidate_scores, hybrid_order
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.items.text import item_text, text_embeddings

    model, K = tmp_path / "tuned", 6
    shutil.copytree(token_with_retriever, model)
    rec = Recommender(model)
    data, uid, hist = a_user(rec)
    req = Query(user_id=uid, history=hist, seen=set(hist))
    scored = candidate_scores(rec, [req], 10, True, K)[0]
    emb = torch.from_numpy(text_embeddings([item_text(rec.catalog[i]) for i in rec.index.item_ids]))
    at = {i: n for n, i in enumerate(rec.index.item_ids)}
    user = emb[[at[i] for i in hist]].mean(0)
    want = [max(0.0, 1 - float(user @ emb[at[i]])) for i in scored["items"]]
    assert scored["content"] == pytest.approx(want, abs=1e-4)
    by_text = sorted(scored["items"], key=lambda i: (want[scored["items"].index(i)], scored["items"].index(i)))
    assert hybrid_order(scored, 0.0, K, 1e4) == by_text != hybrid_order(scored, 0.0, K)

    tuned = tune_fusion(FusionConfig(model=str(model), candidates=f"retriever:{K}", weights=[0.0, 1.0],
                                     history_weights=[1e4, 0.0], max_users=12), log=lambda m: None)
    assert [(r["weight"], r["history_match"]) for r in tuned["table"]] == [(0.0, 0.0), (0.0, 1e4), (1.0, 0.0),
                                                                           (1.0, 1e4)]
    best = max(r["NDCG@10"] for r in tuned["table"])
    first = next(r for r in sorted(tuned["table"], key=lambda r: (r["weight"], r["history_match"]))
                 if r["NDCG@10"] == best)
    assert (tuned["weight"], tuned["history_match"]) == (first["weight"], first["history_match"])

    # served by default: a fusion file whose h dominates ranks the K by their texts alone
    (model / "fusion.json").write_text(json.dumps({**tuned, "weight": 0.0, "history_match": 1e4}))
    rec = Recommender(model)
    items = lambda res: [r.item_id for r in res[0].items]  # noqa: E731
    assert items(rec.recommend([req], k=K, search="exact")) == by_text
    assert items(rec.recommend([req], k=K, search="exact", history_match=0.0)) == \
        items(rec.recommend([req], k=K, search="exact", candidates=K, retriever_weight=0.0, history_match=0.0))
    assert items(rec.recommend([req], k=K, search="exact", history_match=0.0)) != by_text
    r = run_evaluation(EvaluateConfig(model=str(model), max_users=6, ks=[1, 5], baselines=[],
                                      output=str(tmp_path / "ev")), log=lambda m: None)
    assert r["fusion"]["history_match"] == 1e4 and r["fusion"]["weight"] == 0.0
    assert "+ 10000 x history match" in (tmp_path / "ev" / "metrics.md").read_text()

    (model / "fusion.json").write_text(json.dumps({**tuned, "history_match": -1}))
    with pytest.raises(GenrecError, match="fusion file .*history_match"):
        Recommender(model)
    with pytest.raises(GenrecError, match="--history-weights must be non-negative"):
        tune_fusion(FusionConfig(model=str(token_with_retriever), history_weights=[-1.0]), log=lambda m: None)


def test_tuned_fusion_of_a_rerank_model(rerank_model, tmp_path):
    """A rerank model tunes the weight of its own K (no --candidates): served lists are then the fused ones."""
    from genrec.config import FusionConfig
    from genrec.eval.fusion import tune_fusion
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.infer.hybrid import rerank

    model = tmp_path / "rerank"
    shutil.copytree(rerank_model, model)
    tuned = tune_fusion(FusionConfig(model=str(model), candidates=None, weights=[0.0, 1e4], max_users=8),
                        log=lambda m: None)
    assert tuned["candidates"] is None and len(tuned["table"]) == 2
    assert {m: tuned["table"][1][m] for m in ("NDCG@10", "HR@10")} == tuned["retriever_alone"]
    rec = Recommender(model)
    data, uid, hist = a_user(rec)
    req = Query(user_id=uid, history=hist, seen=set(hist))
    fused = rerank(rec, [req], 5, weights=(tuned["weight"],))[0][0].items
    assert [r.item_id for r in rec.recommend([req], k=5)[0].items] == [r.item_id for r in fused]


def test_bad_hybrid_requests_are_one_line_errors(tiny_model, rerank_model, tmp_path):
    users = tmp_path / "u.jsonl"
    users.write_text('{"history": ["1"]}\n')
    cli = [sys.executable, "-m", "genrec.cli"]
    cases = [
        ([*cli, "generate", "--model", str(tiny_model), "--users", str(users), "--out", str(tmp_path / "o.jsonl"),
          "--candidates", "retriever:5"], "has no retriever"),
        ([*cli, "generate", "--model", str(rerank_model), "--users", str(users), "--out", str(tmp_path / "o.jsonl"),
          "--candidates", "retriever:x"], "retriever:K"),
        ([*cli, "evaluate", "--model", str(rerank_model), "--max-users", "3", "--candidates", "retriever:5"],
         "reranks its retriever"),
        ([*cli, "tune-fusion", "--model", str(tiny_model)], "has no retriever"),
        ([*cli, "tune-fusion", "--model", str(rerank_model), "--weights", "1,-2"], "non-negative"),
        ([*cli, "tune-fusion", "--model", str(tiny_model), "--candidates", "retriever:5,0"], "every K >= 1"),
    ]
    for argv, needle in cases:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert p.returncode == 2 and len(errors) == 1 and needle in errors[0], p.stderr[-500:]
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_rerank_model_served_to_the_openai_client(reranker):
    from openai import OpenAI

    from servers import start_server

    data, uid, hist = a_user(reranker)
    srv, thread, url = start_server(reranker, timeout_s=120)
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        resp = client.chat.completions.create(model="genrec-test", n=4,
                                              messages=[{"role": "user", "content": json.dumps({"user_id": uid})}])
        titles = [c.message.content for c in resp.choices]
        assert set(titles) <= {r["title"] for r in reranker.catalog.values()} and len(set(titles)) == 4
        from genrec.infer.query import Query

        items = data.users[uid]["items"]
        ref = reranker.recommend([Query(user_id=uid, history=items, seen=set(items))], k=4)[0]
        assert titles == [r.title for r in ref.items]
        assert resp.usage.prompt_tokens > 0
    finally:
        srv.should_exit = True
        thread.join(10)


def test_rerank_evaluation_reports_the_retriever_and_its_recall(rerank_model, tmp_path):
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation

    r = run_evaluation(EvaluateConfig(model=str(rerank_model), max_users=10, ks=[1, 5, 10], output=str(tmp_path)),
                       log=lambda m: None)
    assert {"genrec", "genrec x sasrec", "sasrec", "popular"} <= set(r["results"])
    assert r["sasrec"]["source"] == "the model's retriever" and r["hybrid"] == "rerank"
    k = r["retriever_recall"]["k"]
    recs = [json.loads(x) for x in (tmp_path / "recommendations.jsonl").read_text().splitlines()]
    # rerank only reorders the retriever's K: genrec's HR@K is exactly the retriever's recall@K on these users
    hits = sum(x["target"] in x["recommended"][:k] for x in recs) / len(recs)
    assert hits == pytest.approx(r["retriever_recall"]["llm_users"])
    assert "genrec x sasrec - sasrec" in r["paired_differences"]


def test_rank_and_prompts_show_with_a_rerank_model(rerank_model, reranker, tiny_data, tmp_path):
    """`genrec rank` orders a line's own candidates by P(label); `prompts show --task rerank` shows the labelled
    list and the answer label."""
    from genrec.data.prepared import load_prepared

    data = load_prepared(tiny_data)
    uid = sorted(data.users)[1]
    cands = [i for i in reranker.index.item_ids if i not in set(data.users[uid]["items"])][:5]
    (tmp_path / "c.jsonl").write_text(json.dumps({"user_id": uid, "candidates": cands}) + "\n")
    p = subprocess.run([sys.executable, "-m", "genrec.cli", "rank", "--model", str(rerank_model), "--candidates",
                        str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "r.jsonl")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-800:]
    ranked = json.loads((tmp_path / "r.jsonl").read_text())["ranked"]
    assert sorted(r["item_id"] for r in ranked) == sorted(cands)
    probs = [r["p_label"] for r in ranked]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)
    p = subprocess.run([sys.executable, "-m", "genrec.cli", "prompts", "show", "--data", str(tiny_data), "--user", uid,
                        "--task", "rerank"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-800:]
    assert "Candidates:\nA. " in p.stdout and "Answer with its letter" in p.stdout


def test_a_trained_retriever_is_reused_not_retrained(rerank_model, tiny_data, tmp_path):
    from conftest import tiny_sft_config

    from genrec.data.prepared import load_prepared
    from genrec.infer.retriever import Retriever
    from genrec.train.recipe import train

    with pytest.raises(GenrecError, match="neither a known kind"):
        train(tiny_sft_config(tiny_data, tmp_path / "bad", retriever=str(tmp_path / "nothing")), log=lambda m: None)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    logs: list[str] = []
    out = tmp_path / "m"
    train(tiny_sft_config(tiny_data, out, max_steps=1, save_steps=100, retriever=str(rerank_model)), log=logs.append)
    assert any("retriever: reusing" in m for m in logs) and not any("training sasrec" in m for m in logs)
    hists = [u["items"][:-1] for u in list(load_prepared(tiny_data).users.values())[:4]]
    assert (Retriever.load(out).scores(hists) == Retriever.load(rerank_model).scores(hists)).all()


def test_one_owner_decides_the_retriever_weight():
    """Asked for beats tuned beats the untuned default, which differs for a search (the LLM's order) and for
    evaluate's fused row (an even mix fixed in advance)."""
    from genrec.infer.hybrid import UNTUNED_FUSED_ROW_WEIGHT, UNTUNED_WEIGHT, retriever_weight

    tuned = {"weight": 4.0, "users": 12}
    assert retriever_weight(0.5, tuned) == (0.5, "--retriever-weight")
    assert retriever_weight(None, tuned) == (4.0, "tuned on 12 validation users")
    assert retriever_weight(None, None) == (UNTUNED_WEIGHT, "fixed in advance") == (0.0, "fixed in advance")
    assert retriever_weight(None, {}, UNTUNED_FUSED_ROW_WEIGHT) == (1.0, "fixed in advance")
