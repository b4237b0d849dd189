"""The sequence objective: the inference prompt is the training sequence's prefix id for id, windows make every
item a target exactly once, token-budget batches, a real fine-tune that generates valid items, the clock."""

from __future__ import annotations

import json
import re
import random

import pytest

from conftest import tiny_sft_config
from genrec.errors import GenrecError

BEFORE_TEMPLATE = """{% block system %}You list items.{% endblock %}
{% block user %}One {{ id_style }} per line.{% endblock %}
{% block before %}{{ n }}. {% if date %}[{{ date }}] {% endif %}{% endblock %}
{% block after %}{% if it.facts %}  ({{ it.facts }}){% endif %}{% if it.rating %} rated {{ it.rating }}{% endif %}
{% endblock %}
"""


def _builder(tokenizer, data, template=None, objective="sequence", **kw):
    from genrec.config import PromptConfig
    from genrec.items.index import ItemIndex
    from genrec.prompts.builder import load_template
    from genrec.prompts.sequence import make_builder

    cfg = PromptConfig(objective=objective, **kw)
    return make_builder(tokenizer, cfg, data.catalog, ItemIndex.build(list(data.catalog.values())),
                        load_template(template) if template else None)


def _targets(ex, end_id: int) -> list[tuple[int, int]]:
    """(start, end) spans of the completion mask, one per target item (each closes with the end token)."""
    spans, m, ids = [], ex["completion_mask"], ex["input_ids"]
    start = None
    for i, on in enumerate(m):
        if on and start is None:
            start = i
        if on and ids[i] == end_id:
            spans.append((start, i + 1))
            start = None
    return spans


@pytest.mark.parametrize("custom", [False, True])
def test_inference_prompt_is_the_training_prefix(tokenizer, tiny_data, tmp_path, custom):
    """For every target of a window, the prompt generation builds from the same history is exactly the training
    ids before that target's identifier, and the identifier + newline that follow are the trie path."""
    from genrec.data.prepared import load_prepared

    data = load_prepared(tiny_data)
    tpl = None
    if custom:  # per-line fields: position and date before the identifier, facts and the user's rating after
        tpl = tmp_path / "seq.j2"
        tpl.write_text(BEFORE_TEMPLATE)
    b = _builder(tokenizer, data, tpl, max_history=50, max_sequence_tokens=4096)
    for user in list(data.users.values())[:3]:
        items = data.train_items(user)
        ts, rs = user["timestamps"][:len(items)], user["ratings"][:len(items)]
        (ex,) = b.sequence_examples(items, ts, rs)
        spans = _targets(ex, b.item_end_id)
        assert len(spans) == len(items) - 1
        for j, (s, e) in enumerate(spans, start=1):
            prompt = b.encode(items[:j], ts[:j], history_ratings=rs[:j])
            if custom:  # the next line's `before` has no date at inference: compare up to where it starts
                before_next = b.before(j + 1, None, None)
                assert prompt[-len(before_next):] == before_next
                prompt = prompt[:-len(before_next)]
                assert ex["input_ids"][:len(prompt)] == prompt
            else:
                assert ex["input_ids"][:s] == prompt
                assert ex["input_ids"][s:e] == b.ident(items[j]) and b.ident(items[j])[-1] == b.item_end_id
    text = b.as_text(ex["input_ids"])
    assert data.catalog[items[1]]["title"] in text
    if custom:
        assert "2. [" in text and " rated " in text


def test_windows_make_every_item_a_target_once(tokenizer, tiny_data):
    from genrec.data.prepared import load_prepared

    data = load_prepared(tiny_data)
    b = _builder(tokenizer, data, max_history=5, max_sequence_tokens=200, item_facts=[])
    user = max(data.users.values(), key=lambda u: len(u["items"]))
    items = data.train_items(user)
    lines = [len(b.ident(i)) for i in items]
    spans = b.windows(len(items), lines)
    assert spans[0][0] == 0 and spans[-1][1] == len(items)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s1 == e0 - 1  # each window starts on the item the previous one ended with
    targets = [j for s, e in spans for j in range(s + 1, e)]
    assert targets == list(range(1, len(items)))  # every item but the first, exactly once, in order
    header = len(b._header)
    for s, e in spans:
        assert e - s <= 6
        assert header + sum(lines[s:e]) <= 200 or e - s == 2
    exs = b.sequence_examples(items)
    assert len(exs) == len(spans) and sum(len(_targets(x, b.item_end_id)) for x in exs) == len(items) - 1
    assert all(len(x["input_ids"]) == len(x["completion_mask"]) for x in exs)


def test_long_history_is_trimmed_to_the_window_at_inference(tokenizer, tiny_data):
    from genrec.data.prepared import load_prepared
    from genrec.prompts.sequence import ANSWER_ROOM

    data = load_prepared(tiny_data)
    b = _builder(tokenizer, data, max_history=50, max_sequence_tokens=160, item_facts=[])
    hist = list(data.catalog)[:40]
    ids = b.encode(hist)
    assert len(ids) <= 160 - ANSWER_ROOM
    assert b.as_text(ids).rstrip().endswith(data.catalog[hist[-1]]["title"])  # the newest items are kept


def test_token_batches_bound_padding():
    from genrec.train.examples import token_batches

    rng = random.Random(0)
    lengths = [rng.randrange(30, 420) for _ in range(500)] + [2000]
    batches = token_batches(lengths, 1024, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 1024 or len(b) == 1
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.10
    assert token_batches(lengths, 1024, seed=1) == batches and token_batches(lengths, 1024, seed=2) != batches


def test_sequence_sft_generates_and_mixes_with_preference(tmp_path, tiny_data):
    """A real fine-tune with the sequence objective for next_item beside a prefix-objective preference task: the
    card records it, generation continues the list with valid items, preference still scores."""
    from genrec.infer.recommender import Recommender
    from genrec.infer.query import Query
    from genrec.prompts.sequence import SequenceBuilder
    from genrec.train.recipe import train

    out = tmp_path / "m"
    cfg = tiny_sft_config(tiny_data, out, objective="sequence", tasks=["next_item", "preference"], max_steps=3,
                          save_steps=100, max_batch_tokens=600)
    cfg.prompt.max_history = 20
    train(cfg, log=lambda m: None)
    card = json.loads((out / "genrec.json").read_text())
    assert card["objective"] == "sequence" and card["tasks"]["next_item"]["objective"] == "sequence"
    assert card["tasks"]["preference"]["objective"] == "prefix"
    assert card["target_tokens"] > 0 and card["train_tokens"] > card["target_tokens"]
    rec = Recommender(out)
    assert isinstance(rec.history_prompts, SequenceBuilder)
    hist = list(rec.catalog)[:4]
    res = rec.recommend([Query(history=hist, seen=set(hist))], k=5)[0].items
    assert len(res) == 5 and all(r.item_id in rec.catalog and r.item_id not in hist for r in res)
    p = rec.score("preference", [Query(history=hist)], [[hist[0], list(rec.catalog)[-1]]])[0]
    assert len(p) == 2 and all(0 < x < 1 for x in p)


def test_max_minutes_stops_on_the_clock_and_the_bar_and_logs_follow_it(tmp_path, tiny_data, capsys):
    from genrec.train.recipe import train

    out = tmp_path / "m"
    cfg = tiny_sft_config(tiny_data, out, objective="sequence", max_steps=0, num_epochs=50, max_minutes=0.3,
                          save_steps=1000, max_batch_tokens=200, warmup_ratio=0.0, save_minutes=0.1,
                          keep_checkpoints=5)
    train(cfg, log=lambda m: None)
    card = json.loads((out / "genrec.json").read_text())
    assert card["stopped_by_clock"] and card["train_seconds"] < 60
    rows = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    lrs = [r["learning_rate"] for r in rows]
    assert len(lrs) >= 2 and lrs[0] <= cfg.learning_rate
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] < lrs[0]  # the cosine follows the clock down
    # what the Trainer logged (console, trackers, trainer_state) is the rate the optimizer used, not the
    # epoch-bound scheduler's (which at 50 epochs would still be near the peak)
    out_err = capsys.readouterr()
    shown = [float(x) for x in re.findall(r"'learning_rate': '([^']+)'", out_err.out)]
    assert shown == [float(f"{r['learning_rate']:.4g}") for r in rows] and min(shown) < 0.9 * cfg.learning_rate
    ckpt = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    logged = {h["step"]: h["learning_rate"] for h in json.loads((ckpt / "trainer_state.json").read_text())[
        "log_history"] if "learning_rate" in h}
    assert logged and all(abs(logged[r["step"]] - r["learning_rate"]) < 1e-12 for r in rows if r["step"] in logged)
    # the bar counts minutes of the budget, not steps
    bar = out_err.err.split("Building labels")[-1]  # after the data bars: the training bar alone
    assert "/0.3 min [" in bar and "it/s" not in bar and "step 2" in bar
    with pytest.raises(GenrecError, match="max_minutes"):
        train(tiny_sft_config(tiny_data, tmp_path / "bad", objective="sequence", max_minutes=0), log=lambda m: None)


def test_the_cpu_clock_counts_what_the_process_runs(tmp_path, tiny_data):
    """clock=cpu: time the process does not run (asleep here; on a busy machine, waiting for a core) spends none
    of the budget, and work spends it at most at wall speed; a run on it stops by that clock."""
    import time

    import torch

    from genrec.train.callbacks import clock_source
    from genrec.train.recipe import train

    cpu, wall = clock_source("cpu"), clock_source("wall")
    c, w = cpu(), wall()
    time.sleep(1.0)
    assert cpu() - c < 0.2 and wall() - w >= 1.0
    c, p, w = cpu(), time.process_time(), wall()
    while time.process_time() - p < 0.4 and wall() - w < 60:  # one thread busy for 0.4 CPU-seconds
        pass
    assert cpu() - c == pytest.approx((time.process_time() - p) / torch.get_num_threads(), abs=0.02)
    assert cpu() - c <= wall() - w
    out = tmp_path / "m"
    train(tiny_sft_config(tiny_data, out, objective="sequence", max_steps=0, num_epochs=50, max_minutes=0.05,
                          clock="cpu", save_steps=1000, max_batch_tokens=200), log=lambda m: None)
    card = json.loads((out / "genrec.json").read_text())
    assert card["stopped_by_clock"] and card["sft"]["clock"] == "cpu" and card["global_step"] >= 1
    with pytest.raises(GenrecError, match="clock"):
        train(tiny_sft_config(tiny_data, tmp_path / "bad", clock="sundial"), log=lambda m: None)


def test_sequence_objective_is_for_next_item_only(tokenizer, tiny_data):
    from genrec.data.prepared import load_prepared

    data = load_prepared(tiny_data)
    with pytest.raises(GenrecError, match="sequence objective is for next_item"):
        _builder(tokenizer, data, task="preference")
    with pytest.raises(GenrecError, match="unknown objective"):
        _builder(tokenizer, data, objective="magic")
    b = _builder(tokenizer, data)
    with pytest.raises(GenrecError, match="reads histories"):
        b.encode([], request="a mystery novel")


def test_a_request_line_is_trained_before_the_item_it_asks_for_and_read_as_at_inference(tokenizer, tiny_data):
    """prompt.request_share: a window's last target follows a request built from its attributes; the ids before
    that target are exactly what `encode(history, request=...)` builds, every earlier target is supervised as in a
    window without one, and some requests also come alone (no history) as `encode([], request=...)` builds them."""
    from genrec.data.prepared import load_prepared
    from genrec.prompts.tasks import request_for

    data = load_prepared(tiny_data)
    b = _builder(tokenizer, data, max_history=50, max_sequence_tokens=4096, request_share=1.0)
    plain = _builder(tokenizer, data, max_history=50, max_sequence_tokens=4096)
    assert b.reads_text and not plain.reads_text
    alone_seen = 0
    for n, user in enumerate(list(data.users.values())[:12]):
        items = data.train_items(user)
        ts = user["timestamps"][:len(items)]
        exs = b.sequence_examples(items, ts, rng=random.Random(n))
        replay = random.Random(n)
        replay.random()
        text = request_for(b, items[-1], replay)
        assert text is not None and "Request: " + text.split(" with ")[0] in b.as_text(exs[-1]["input_ids"])
        window = exs[-1]  # one window (the whole history fits), after its request-alone example if any
        (ref,) = plain.sequence_examples(items, ts)
        spans, ref_spans = _targets(window, b.item_end_id), _targets(ref, b.item_end_id)
        assert [window["input_ids"][s:e] for s, e in spans] == [ref["input_ids"][s:e] for s, e in ref_spans]
        assert window["input_ids"][:spans[-2][1]] == ref["input_ids"][:ref_spans[-2][1]]  # earlier lines as before
        prompt = b.encode(items[:-1], ts[:-1], request=text)
        assert window["input_ids"][:spans[-1][0]] == prompt  # the inference prompt, id for id
        for alone in (x for x in exs if x is not window):
            alone_seen += 1
            s, e = _targets(alone, b.item_end_id)[0]
            assert alone["input_ids"][:s] == b.encode([], request=text)
            assert alone["input_ids"][s:e] == b.ident(items[-1])
    assert alone_seen  # a quarter of requests also come without a history (seeded: some of these 12)
    with pytest.raises(GenrecError, match="it was not trained to answer request text"):
        plain.encode(items[:2], request="something with comedy")


def test_request_share_bad_settings_are_one_line_errors(tokenizer, tiny_data, tmp_path):
    from genrec.data.prepared import load_prepared

    data = load_prepared(tiny_data)
    with pytest.raises(GenrecError, match=r"prompt.request_share must be in \[0, 1\], got 1.5"):
        _builder(tokenizer, data, request_share=1.5)
    tpl = tmp_path / "seq.j2"
    tpl.write_text(BEFORE_TEMPLATE)  # no request block
    with pytest.raises(GenrecError, match="prompt.request_share needs a `request` block in"):
        _builder(tokenizer, data, tpl, request_share=0.5)
    from genrec.train.recipe import train

    cfg = tiny_sft_config(tiny_data, tmp_path / "m", objective="prefix")
    cfg.prompt.reason_share = 0.5
    with pytest.raises(GenrecError, match="prompt.reason_share writes request lines or reasons into the sequence"):
        train(cfg, log=lambda m: None)
    assert not (tmp_path / "m").exists()
    for share, weight in ((0.0, 0.5), (0.5, -1.0)):  # a weight with no reasons to weigh, or below 0
        cfg = tiny_sft_config(tiny_data, tmp_path / "m", objective="sequence", item_id="token", reason_weight=weight)
        cfg.prompt.reason_share = share
        with pytest.raises(GenrecError, match=rf"reason_weight must be >= 0 and applies to prompt.reason_share's "
                                              rf"reasons, got {weight}$"):
            train(cfg, log=lambda m: None)
        assert not (tmp_path / "m").exists()


def test_a_reason_names_what_exists(tokenizer, tiny_data):
    """The shipped reason: the history item it names (by default the newest) and the attribute values both items
    have; an item without attributes, or one with no history, still gets a sentence (no template error)."""
    from genrec.data.prepared import load_prepared

    data = load_prepared(tiny_data)
    a, b = list(data.catalog)[:2]
    builder = _builder(tokenizer, data, reason_share=1.0)
    catalog = builder.catalog = {**data.catalog, b: {**data.catalog[b], "attrs": {}}}  # b: no attributes
    said = builder.reason_text(b, [a])
    assert said == f"Because of {catalog[a]['title']} in your history."  # b shares nothing: it has no attributes
    assert builder.reason_text(a, [a]).startswith(f"Because of {catalog[a]['title']} in your history: both ")
    first = sorted((k, v) for k, v in catalog[a]["attrs"].items() if v)[0]
    assert builder.reason_text(a, []).startswith(f"To start with: {first[0]} ")
    assert builder.reason_text(a, [], request="x").startswith(f"For your request: {first[0]} ")
