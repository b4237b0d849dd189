"""Bootstrap intervals and paired differences, the SASRec baseline against a pattern it must learn, and the
evaluation protocol's target rule (a re-consumed target stays rankable)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from genrec import metrics


def test_per_user_values_hand_computed():
    v = metrics.per_user([1, 3, None, 12], [1, 10])
    assert v["HR@1"].tolist() == [1, 0, 0, 0]
    assert v["HR@10"].tolist() == [1, 1, 0, 0]
    assert v["NDCG@10"].tolist() == pytest.approx([1, 1 / math.log2(4), 0, 0])
    assert v["MRR"].tolist() == pytest.approx([1, 1 / 3, 0, 1 / 12])


def test_bootstrap_is_seeded_and_brackets_the_mean():
    rng = random.Random(0)
    x = np.array([float(rng.random() < 0.2) for _ in range(400)])
    d1, d2 = metrics.bootstrap_draws(400, seed=3), metrics.bootstrap_draws(400, seed=3)
    assert (d1 == d2).all()
    lo, hi = metrics.interval(x, d1)
    assert lo < x.mean() < hi
    # the 95% interval of a Bernoulli(0.2) mean over 400 users is about +-0.039 wide
    assert 0.06 < hi - lo < 0.10


def test_paired_difference_sees_what_unpaired_intervals_miss():
    """B = A minus a hit on 8 of 200 users: the marginal intervals overlap, the paired one excludes 0."""
    rng = random.Random(1)
    a = np.array([float(rng.random() < 0.3) for _ in range(200)])
    hits = np.flatnonzero(a)[:8]
    b = a.copy()
    b[hits] = 0.0
    draws = metrics.bootstrap_draws(200, seed=0)
    lo_a, hi_a = metrics.interval(a, draws)
    lo_b, hi_b = metrics.interval(b, draws)
    assert lo_a < hi_b  # overlapping
    d = metrics.paired_difference({"HR@10": a}, {"HR@10": b}, draws)["HR@10"]
    assert d["diff"] == pytest.approx(8 / 200) and d["excludes_zero"] and d["lo"] > 0
    same = metrics.paired_difference({"HR@10": a}, {"HR@10": a}, draws)["HR@10"]
    assert same["diff"] == 0 and not same["excludes_zero"]


def test_sasrec_learns_a_successor_pattern():
    """Item i is always followed by i+1: a correct SASRec reaches HR@1 > 0.9 within seconds."""
    from genrec.infer.sasrec import sasrec_scores, train_sasrec

    rng = random.Random(0)
    n = 60
    seqs = []
    for _ in range(300):
        s, length = rng.randrange(1, n + 1), rng.randrange(5, 15)
        seqs.append([(s - 1 + j) % n + 1 for j in range(length)])
    model, facts = train_sasrec([s[:-2] for s in seqs], [(s[:-2], s[-2]) for s in seqs], n, max_seconds=60,
                                log=lambda m: None)
    scores = sasrec_scores(model, [s[:-1] for s in seqs], [set(s[:-1]) for s in seqs])
    hr1 = np.mean([int(scores[r].argmax()) + 1 == s[-1] for r, s in enumerate(seqs)])
    assert hr1 > 0.9, (hr1, facts)
    assert facts["dropout"] == 0.5  # short sequences: the sparse-data setting


def test_sasrec_real_positions_never_read_padding():
    """With position embeddings zeroed, the outputs at real positions are the same with and without left padding:
    padded keys are masked (unmasked, their LayerNorm-bias keys would take part of the attention)."""
    from genrec.infer.sasrec import SASRec

    torch.manual_seed(0)
    m = SASRec(20, max_len=8, dropout=0.0).eval()
    with torch.no_grad():
        m.pos.weight.zero_()
        short = m(torch.tensor([[3, 5, 7]]))
        padded = m(torch.tensor([[0, 0, 0, 0, 0, 3, 5, 7]]))
    assert torch.allclose(short[0], padded[0, 5:], atol=1e-5)


def test_reconsumed_target_stays_rankable(tmp_path):
    """Every user's test item is one they had before (item 1, the most popular): it must be rankable (excluding
    it would make it a certain miss), so most-popular ranks it first for every user."""
    from genrec.config import DataConfig, EvaluateConfig
    from genrec.data.prepared import load_prepared
    from genrec.data.prepare import prepare
    from genrec.eval.protocol import evaluate_baselines

    rows = ["user_id,item_id,timestamp"]
    for u in range(12):
        seq = ["1"] + [str(2 + (u + j) % 6) for j in range(4)] + ["1"]
        rows += [f"u{u},{i},{t}" for t, i in enumerate(seq)]
    (tmp_path / "i.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "c.csv").write_text("item_id,title\n" + "".join(f"{i},Item {i}\n" for i in range(1, 8)))
    prepare(DataConfig(interactions=str(tmp_path / "i.csv"), catalog=str(tmp_path / "c.csv"),
                       output=str(tmp_path / "p"), min_item_interactions=1, min_user_interactions=3),
            log=lambda m: None)
    data = load_prepared(tmp_path / "p")
    res = evaluate_baselines(data, EvaluateConfig(baselines=["popular"], ks=[1, 5]), log=lambda m: None)
    assert res["results"]["popular"]["HR@1"] == 1.0
    assert json.dumps(res)  # machine-readable as it is
