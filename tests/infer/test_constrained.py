"""Trie-constrained beam search on the real default model: every result is a catalog item, always."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from genrec.config import PromptConfig
from genrec.errors import GenrecError
from genrec.infer.constrained import beam_search, top_items
from genrec.infer.constrained import TokenTrie
from genrec.items.index import ItemIndex
from genrec.prompts.builder import PromptBuilder, load_template, template_path


@pytest.fixture(scope="module")
def base_lm(base_model_dir):
    from genrec.model_dir import load_base

    from genrec.infer.backends import HFBackend

    model, tok = load_base(base_model_dir)
    return HFBackend(model, tok.pad_token_id, tok.eos_token_id), tok


def build(tokenizer, titles):
    catalog = {str(i): {"item_id": str(i), "title": t, "attrs": {}} for i, t in enumerate(titles)}
    index = ItemIndex.build(list(catalog.values()))
    cfg = PromptConfig()
    b = PromptBuilder(tokenizer, cfg, catalog, index, load_template(template_path(cfg)))
    return catalog, index, b, TokenTrie([b.item_tokens(t) for t in index.targets])


words = st.sampled_from(["Heat", "Alien", "Aliens", "The", "Matrix", "Love", "Actually", "2", "(1995)", "Star"])
titles_st = st.lists(st.lists(words, min_size=1, max_size=4).map(" ".join), min_size=2, max_size=12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # shrinking a model-backed case takes minutes
@given(titles=titles_st, k=st.integers(1, 5), data=st.data())
def test_results_are_always_catalog_items(base_lm, titles, k, data):
    model, tok = base_lm
    catalog, index, b, trie = build(tok, titles)
    n = len(index.item_ids)
    banned = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    history = [index.item_ids[data.draw(st.integers(0, n - 1))]]
    found = top_items(model, [b.encode(history)], trie, k, k, [banned])[0]
    items = [h.item for h in found]
    assert len(items) == len(set(items))  # distinct
    assert all(0 <= i < n for i in items)  # catalog items only
    assert not set(items) & banned  # excluded items never appear
    assert len(items) == min(k, n - len(banned))
    assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)


def test_prefix_titles_and_duplicates(base_lm):
    model, tok = base_lm
    titles = ["Heat", "Heat (1995)", "Heat", "Alien", "Aliens", "Alien 3"]
    catalog, index, b, trie = build(tok, titles)
    assert index.disambiguated == 1 and index.targets[2] == "Heat [2]"
    found = beam_search(model, [b.encode(["3"])], trie, 6, 6, [set()])[0]
    assert sorted(h.item for h in found) == list(range(6))  # every item reachable, incl. prefixes of others


def test_scores_are_sequence_log_probabilities(base_lm):
    import torch

    model, tok = base_lm
    catalog, index, b, trie = build(tok, ["Heat", "Alien", "Toy Story"])
    prompt = b.encode(["0"])
    best = beam_search(model, [prompt], trie, 1, 3, [set()])[0][0]
    seq = prompt + b.item_tokens(index.targets[best.item])
    with torch.no_grad():
        logits = model.model(torch.tensor([seq])).logits[0].float().log_softmax(-1)
    ref = sum(logits[len(prompt) - 1 + j, t].item() for j, t in enumerate(seq[len(prompt):]))
    assert best.score == pytest.approx(ref, abs=1e-3)


def test_unconstrained_search_space_of_the_benchmark(base_lm):
    """bench_generate's comparison runs the same beam search over the whole vocabulary (its own search space,
    no mode inside the core loop): hypotheses are free text (-1) or, by chance, catalog items."""
    from benchmarks.bench_generate import WholeVocabulary

    model, tok = base_lm
    catalog, index, b, trie = build(tok, ["Heat", "Alien"])
    found = beam_search(model, [b.encode(["0"])], WholeVocabulary(trie, model), 2, 4, [set()],
                        max_new_tokens=6)[0]
    assert 1 <= len(found) <= 2 and all(h.item == -1 or 0 <= h.item < 2 for h in found)
    assert [h.score for h in found] == sorted((h.score for h in found), reverse=True) and found[0].score < 0


def test_benchmark_counts_the_beam_tokens_it_decodes(base_lm):
    """bench_generate's per-token cost divides by the beam tokens a search decoded: counting changes no result,
    and the count is the rows of every step, the prefill not included."""
    from benchmarks.bench_generate import CountingBackend

    model, tok = base_lm
    catalog, index, b, trie = build(tok, ["Heat", "Alien", "Toy Story", "Star Wars: Episode IV"])
    prompts = [b.encode(["0"]), b.encode(["1", "2"])]
    counting = CountingBackend(model)
    found = beam_search(counting, prompts, trie, 3, 3, [set(), set()])
    assert [[(h.item, round(h.score, 4)) for h in f] for f in found] == \
        [[(h.item, round(h.score, 4)) for h in f] for f in beam_search(model, prompts, trie, 3, 3, [set(), set()])]
    assert 0 < counting.tokens <= len(prompts) * 3 * trie.depth
    before = counting.tokens
    beams = counting.start(prompts[:1], None)  # the prefill is not a decoded token
    assert counting.tokens == before
    beams.advance([0, 0], [b.item_tokens("Heat")[0], b.item_tokens("Alien")[0]], None)  # two rows of one step
    assert counting.tokens == before + 2


def test_batch_equals_one_by_one(recommender, tiny_data):
    from genrec.data.prepared import load_prepared
    from genrec.infer.query import Query

    data = load_prepared(tiny_data)
    rows = data.split("test")
    reqs = [Query(user_id=r["user_id"], history=r["history"], seen=set(r["history"])) for r in list(rows)[:4]]
    batched = recommender.recommend(reqs, k=5)
    single = [recommender.recommend([r], k=5)[0] for r in reqs]
    for a, s in zip(batched, single):
        assert [x.item_id for x in a.items] == [x.item_id for x in s.items]
        for x, y in zip(a.items, s.items):
            assert x.score == pytest.approx(y.score, abs=1e-3)


def test_exclude_seen(recommender, tiny_data):
    from genrec.data.prepared import load_prepared
    from genrec.infer.query import Query

    data = load_prepared(tiny_data)
    row = data.split("test")[0]
    seen = set(data.users[row["user_id"]]["items"][:-1])
    res = recommender.recommend([Query(history=row["history"], seen=seen)], k=10)[0]
    assert not {r.item_id for r in res.items} & seen
    res2 = recommender.recommend([Query(history=row["history"], seen=seen)], k=10, exclude_seen=False)[0]
    assert len(res2.items) == 10


def test_beams_never_enter_subtrees_of_excluded_items(base_lm):
    backend, tok = base_lm
    titles = [f"Star Wars: Episode {n}" for n in range(1, 9)] + ["Heat", "Alien"]
    catalog, index, b, trie = build(tok, titles)
    banned = set(range(8))  # every "Star Wars" item, e.g. all already seen
    dead = trie.dead_nodes(banned)
    star = trie.children[0][b.item_tokens(titles[0])[0]]
    assert star in dead and 0 not in dead
    assert trie.allowed(0, dead) == [t for t, c in trie.children[0].items() if c != star]
    # The history makes "Star Wars" the likely continuation; a width-2 search still finds both allowed items
    # in one pass (no beam is spent in the excluded subtree).
    found = beam_search(backend, [b.encode(["0", "1", "2"])], trie, 2, 2, [banned])[0]
    assert sorted(h.item for h in found) == [8, 9]
    assert beam_search(backend, [b.encode(["0"])], trie, 2, 2, [set(range(10))])[0] == []  # all excluded


def test_cpu_attention_matches_transformers_sdpa(base_model_dir):
    """The GQA-under-mask attention the HF backend switches to on CPU gives transformers' SDPA numbers."""
    import torch

    from genrec.infer.backends import HFBackend, left_pad
    from genrec.model_dir import load_base

    model, tok = load_base(base_model_dir)
    assert model.config._attn_implementation == "sdpa"
    ids, attn = left_pad([list(range(200, 240)), list(range(300, 317))], tok.pad_token_id, "cpu")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=attn).logits
        HFBackend(model, tok.pad_token_id, tok.eos_token_id)
        assert model.config._attn_implementation == "genrec_sdpa"
        got = model(input_ids=ids, attention_mask=attn).logits
    mask = attn.bool()
    assert torch.allclose(got[mask], ref[mask], atol=1e-4)


def test_item_penalty_ranks_by_penalised_log_probability(base_lm):
    """A per-item penalty (the popularity penalty) gives exactly the top-k of log p(item) - penalty."""
    backend, tok = base_lm
    titles = ["Heat", "Alien", "Aliens", "Toy Story", "Toy Story 2", "The Matrix", "Love Actually", "Star Wars"]
    catalog, index, b, trie = build(tok, titles)
    prompt = b.encode(["3"])
    exact = {h.item: h.score for h in beam_search(backend, [prompt], trie, len(titles), len(titles), [set()])[0]}
    assert len(exact) == len(titles)
    best = max(exact, key=exact.get)
    penalty = [0.0] * len(titles)
    penalty[best] = 50.0  # the model's favourite, made "very popular"
    want = sorted(exact, key=lambda i: -(exact[i] - penalty[i]))[:3]
    found = beam_search(backend, [prompt], trie, 3, len(titles), [set()], item_penalty=penalty)[0]
    assert [h.item for h in found] == want and best not in want  # exact when the beam is as wide as the catalog
    narrow = beam_search(backend, [prompt], trie, 3, 3, [set()], item_penalty=penalty)[0]  # beam: approximate
    assert len(narrow) == 3 and best not in {h.item for h in narrow}
    for h in found + narrow:
        assert h.score == pytest.approx(exact[h.item] - penalty[h.item], abs=1e-3)


def test_a_penalty_row_per_prompt_searches_each_as_alone(base_lm):
    """Per-prompt penalty rows ([prompts, items], a request's words matched to item texts) in one batch give each
    prompt exactly what a search of it alone with its row gives; a row count that is not the prompts' is refused."""
    backend, tok = base_lm
    titles = ["Heat", "Alien", "Aliens", "Toy Story", "Toy Story 2", "The Matrix", "Love Actually", "Star Wars"]
    catalog, index, b, trie = build(tok, titles)
    prompts = [b.encode(["3"]), b.encode(["1", "2"]), b.encode(["6"])]
    rows = [[0.0] * len(titles), [float(i % 3) for i in range(len(titles))],
            [5.0 * (i == 4) for i in range(len(titles))]]
    batched = top_items(backend, prompts, trie, 3, 3, [set(), {0}, set()], item_penalty=rows, search="exact")
    for p, row, banned, got in zip(prompts, rows, [set(), {0}, set()], batched):
        alone = top_items(backend, [p], trie, 3, 3, [banned], item_penalty=row, search="exact")[0]
        assert [h.item for h in got] == [h.item for h in alone]
        assert [h.score for h in got] == pytest.approx([h.score for h in alone], abs=1e-4)
    with pytest.raises(GenrecError, match="item_penalty has 2 rows for 3 prompts"):
        top_items(backend, prompts, trie, 3, 3, None, item_penalty=rows[:2])


def brute_force(backend, prompt, b, index, banned=frozenset(), penalty=None):
    """Every allowed item scored by teacher forcing: the reference any exact search must equal."""
    import torch

    out = {}
    with torch.no_grad():
        for i, target in enumerate(index.targets):
            if i in banned:
                continue
            seq = prompt + b.item_tokens(target)
            lp = backend.model(torch.tensor([seq])).logits[0].float().log_softmax(-1)
            out[i] = sum(lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(seq[len(prompt):]))
            out[i] -= penalty[i] if penalty else 0.0
    return out


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(titles=titles_st, k=st.integers(1, 4), data=st.data())
def test_exact_search_equals_brute_force(base_lm, titles, k, data):
    """search="exact" from a width-1 start (the narrowest beam, so the certificate must do the work) returns the
    brute-force top-k, with exclusions and a per-item penalty."""
    backend, tok = base_lm
    catalog, index, b, trie = build(tok, titles)
    n = len(index.item_ids)
    banned = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    penalty = data.draw(st.one_of(st.none(), st.lists(st.floats(0, 5), min_size=n, max_size=n)))
    prompt = b.encode([index.item_ids[data.draw(st.integers(0, n - 1))]])
    ref = brute_force(backend, prompt, b, index, banned, penalty)
    stats = {}
    found = top_items(backend, [prompt], trie, k, 1, [banned], item_penalty=penalty, search="exact", stats=stats)[0]
    want = sorted(ref.values(), reverse=True)[:k]
    assert [h.score for h in found] == pytest.approx(want, abs=1e-3)
    assert all(ref[h.item] == pytest.approx(h.score, abs=1e-3) for h in found)


def test_exact_search_certifies_what_a_narrow_beam_misses(base_lm):
    """A width-1 beam keeps only the best first token; the exact search widens until certified."""
    backend, tok = base_lm
    titles = ["Heat", "Alien", "Aliens", "Alien 3", "Toy Story", "Toy Story 2", "The Matrix", "Love Actually",
              "Star Wars", "Star Trek", "Heat (1995)", "The Thing"]
    catalog, index, b, trie = build(tok, titles)
    prompt = b.encode(["4", "5"])
    ref = brute_force(backend, prompt, b, index)
    want = sorted(ref, key=lambda i: -ref[i])[:5]
    pruned: list[float] = []
    narrow = beam_search(backend, [prompt], trie, 5, 1, [set()], pruned=pruned)[0]
    stats = {}
    exact = top_items(backend, [prompt], trie, 5, 1, [set()], search="exact", stats=stats)[0]
    assert [h.item for h in exact] == want
    if [h.item for h in narrow] != want:  # the beam lost one: its certificate must have said so
        assert pruned[0] > narrow[-1].score and stats["searches"] > 1
    with pytest.raises(Exception, match="unknown search"):
        top_items(backend, [prompt], trie, 5, 5, [set()], search="greedy")
    # a cap on the widening (never below k): the narrow beam's items come back, listed as not certified
    capped = {}
    at_cap = top_items(backend, [prompt], trie, 5, 1, [set()], search="exact", stats=capped, max_width=1)[0]
    assert [h.item for h in at_cap] == [h.item for h in narrow] and capped["max_width"] == 5
    assert capped["uncertified"] == ([0] if pruned[0] > narrow[-1].score else []) and stats["uncertified"] == []


def test_shared_prompt_beams_equal_reordered_kv_cache(base_lm):
    """The prompt KV shared across beams (CPU default) gives the log-probabilities of the reordered full cache, over
    steps that repeat, drop and permute rows; the search returns the same items either way."""
    import random

    from genrec.infer.backends import HFBackend

    backend, tok = base_lm
    assert backend.shared_prompt
    old = HFBackend(backend.model, tok.pad_token_id, tok.eos_token_id, shared_prompt=False)
    rng = random.Random(3)
    prompts = [[rng.randrange(100, 20000) for _ in range(rng.randint(5, 40))] for _ in range(4)]
    a, b = old.start(prompts, None), backend.start(prompts, None)
    assert torch.allclose(a.logp, b.logp, atol=1e-4)
    rows = len(prompts)
    for _ in range(6):
        src = [rng.randrange(rows) for _ in range(rng.randint(1, 9))]
        toks = [rng.randrange(100, 20000) for _ in src]
        assert torch.allclose(a.advance(src, toks, None), b.advance(src, toks, None), atol=1e-4)
        rows = len(src)
    titles = ["Heat", "Alien", "Aliens", "Alien 3", "Toy Story", "Toy Story 2", "The Matrix", "Star Wars"]
    catalog, index, bld, trie = build(tok, titles)
    ps = [bld.encode(["0"]), bld.encode(["4", "5", "6"])]
    x = beam_search(old, ps, trie, 4, 4, [set(), {1}])
    y = beam_search(backend, ps, trie, 4, 4, [set(), {1}])
    assert [[h.item for h in f] for f in x] == [[h.item for h in f] for f in y]
    assert all(h.score == pytest.approx(g.score, abs=1e-3) for f, e in zip(x, y) for h, g in zip(f, e))
