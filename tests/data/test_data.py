"""Data preparation on real files: splits, ordering, filtering, summary, and every bad-input case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from genrec.cli import main
from genrec.config import DataConfig
from genrec.data.prepared import load_prepared
from genrec.data.prepare import prepare
from genrec.errors import GenrecError


def run_prepare(tmp_path: Path, inter: Path, cat: Path, *extra: str):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["data", "prepare", "--interactions", str(inter), "--catalog", str(cat),
                                    "--output", str(out), "--min-item-interactions", "1", *extra])
    return res, out


def assert_clean_failure(res, out: Path, needle: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert needle in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out")]  # no temp dir left behind


def test_splits_are_leave_one_out_by_time(tiny_data):
    data = load_prepared(tiny_data)
    test, valid, train = data.split("test"), data.split("valid"), data.split("train")
    assert len(test) == len(valid) == len(data.users)
    for row in test:
        seq = data.users[row["user_id"]]["items"]
        assert row["target"] == seq[-1] and row["history"] == seq[:-1][-50:]
        assert row["history_ts"] == sorted(row["history_ts"])
    for row in valid:
        seq = data.users[row["user_id"]]["items"]
        assert row["target"] == seq[-2] and row["history"] == seq[:-2][-50:]
    # Training examples never see the valid/test targets: every train target lies before them.
    for row in train:
        seq = data.users[row["user_id"]]["items"]
        t = len(row["history"])
        assert seq[t] == row["target"] and t < len(seq) - 2
    counts = data.manifest["counts"]
    assert counts["train_examples"] == len(train) and counts["users"] == len(data.users)
    assert data.manifest["sources"]["interactions"]["sha256"]


def test_equal_timestamps_keep_file_order_not_id_order(tmp_path):
    inter = tmp_path / "i.csv"
    # user u: items 9,3,7 share a timestamp; file order must win (9, 3, 7), not id order (3, 7, 9).
    inter.write_text("user_id,item_id,timestamp\nu,9,100\nu,3,100\nu,7,100\nu,1,50\nu,2,200\n")
    cat = tmp_path / "c.csv"
    cat.write_text("item_id,title\n" + "".join(f"{i},Movie {i}\n" for i in (1, 2, 3, 7, 9)))
    out = tmp_path / "p"
    prepare(DataConfig(interactions=str(inter), catalog=str(cat), output=str(out), min_item_interactions=1,
                       min_user_interactions=3, tie_order="file"), log=lambda m: None)
    assert load_prepared(out).users["u"]["items"] == ["1", "9", "3", "7", "2"]
    assert "file" in load_prepared(out).manifest["tie_order"]


def test_equal_timestamps_shuffled_by_seed(tmp_path):
    """The default: within a timestamp the order is a seeded permutation, neither file nor id order (ml-latest-small
    lists items by id inside a timestamp, so file order would pick the held-out item by its id)."""
    inter = tmp_path / "i.csv"
    # 40 users, each 6 items on one timestamp, written in id order (as ml-latest-small does)
    inter.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},{i},100\n" for u in range(40) for i in range(1, 7)))
    cat = tmp_path / "c.csv"
    cat.write_text("item_id,title\n" + "".join(f"{i},Movie {i}\n" for i in range(1, 7)))

    def orders(seed, name):
        prepare(DataConfig(interactions=str(inter), catalog=str(cat), output=str(tmp_path / name),
                           min_item_interactions=1, min_user_interactions=3, seed=seed), log=lambda m: None)
        data = load_prepared(tmp_path / name)
        assert "seeded random order (seed %d)" % seed in data.manifest["tie_order"]
        return {u: r["items"] for u, r in data.users.items()}

    a, b, c = orders(1, "a"), orders(1, "b"), orders(2, "c")
    assert a == b  # reproducible
    assert a != c  # the seed decides
    last = [seq[-1] for seq in a.values()]
    assert len(set(last)) > 3  # the held-out item is no longer always the highest id
    assert sum(seq == sorted(seq, key=int) for seq in a.values()) < 5


def test_kcore_and_short_users_dropped(tmp_path):
    inter = tmp_path / "i.tsv"
    rows = ["user\titem\ttime"] + [f"a\t{i}\t{i}" for i in range(1, 6)] + ["b\t1\t1", "b\t2\t2"]
    inter.write_text("\n".join(rows) + "\n")
    cat = tmp_path / "c.jsonl"
    cat.write_text("".join(json.dumps({"item_id": str(i), "title": f"T{i}"}) + "\n" for i in range(1, 6)))
    out = tmp_path / "p"
    m = prepare(DataConfig(interactions=str(inter), catalog=str(cat), output=str(out), min_item_interactions=1,
                           min_user_interactions=3), log=lambda m: None)
    assert m["counts"]["users"] == 1 and m["counts"]["dropped_users"] == 1


def test_parquet_and_iso_dates(tmp_path):
    import pandas as pd

    inter = tmp_path / "i.parquet"
    pd.DataFrame({"user_id": ["u"] * 4, "item_id": ["a", "b", "c", "d"],
                  "timestamp": ["2020-01-01", "2020-01-02T10:00:00", "2020-01-03", "2020-01-04"]}).to_parquet(inter)
    cat = tmp_path / "c.csv"
    cat.write_text("item_id,title\na,A\nb,B\nc,C\nd,D\n")
    out = tmp_path / "p"
    prepare(DataConfig(interactions=str(inter), catalog=str(cat), output=str(out), min_item_interactions=1,
                       min_user_interactions=3), log=lambda m: None)
    assert load_prepared(out).users["u"]["items"] == ["a", "b", "c", "d"]


def test_unknown_items_dropped_by_default_and_strict_fails(tmp_path, tiny_raw):
    inter = tmp_path / "i.csv"
    inter.write_text(tiny_raw[0].read_text() + "1,999999999,4.0,964982703\n")
    res, out = run_prepare(tmp_path, inter, tiny_raw[1])
    assert res.exit_code == 0, res.output
    assert "dropped 1 interaction(s) naming items absent from the catalog" in res.output
    (tmp_path / "x").mkdir()
    res, out2 = run_prepare(tmp_path / "x", inter, tiny_raw[1], "--strict")
    assert_clean_failure(res, out2, "absent from the catalog")


def test_summary_printed(tmp_path, tiny_raw):
    res, out = run_prepare(tmp_path, *tiny_raw)
    assert res.exit_code == 0
    assert "users" in res.output and "density" in res.output and "p90" in res.output
    res2, _ = run_prepare(tmp_path, *tiny_raw)
    assert res2.exit_code == 2 and "already exists" in res2.output


BAD = {
    "missing_file": (None, "does not exist"),
    "empty_file": ("", "is empty"),
    "header_only": ("user_id,item_id,timestamp\n", "has no rows"),
    "missing_column": ("user_id,item_id\nu,1\n", "no timestamp column"),
    "bad_timestamp": ("user_id,item_id,timestamp\nu,1,yesterday-ish\n", "cannot be parsed"),
    "nan_timestamp": ("user_id,item_id,timestamp\nu,1,NaN\n", "timestamp"),
    "empty_user": ("user_id,item_id,timestamp\n,1,5\n", "empty user or item id"),
    "malformed_csv": ('user_id,item_id,timestamp\n"u,1,5\n', "could not be parsed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_interactions(tmp_path, tiny_raw, case):
    text, needle = BAD[case]
    inter = tmp_path / "i.csv"
    if text is not None:
        inter.write_text(text)
    res, out = run_prepare(tmp_path, inter, tiny_raw[1])
    assert_clean_failure(res, out, needle)


def test_non_utf8(tmp_path, tiny_raw):
    inter = tmp_path / "i.csv"
    inter.write_bytes(b"user_id,item_id,timestamp\nu\xff\xfe,1,5\n")
    res, out = run_prepare(tmp_path, inter, tiny_raw[1])
    assert_clean_failure(res, out, "not valid UTF-8")


@pytest.mark.parametrize("catalog,needle", [
    ("item_id,title\n1,A\n1,B\n", "duplicate item id"),
    ("item_id,title\n1,A\n2,   \n", "empty title"),
    ("item_id,name_x\n1,A\n", "no title column"),
])
def test_bad_catalog(tmp_path, tiny_raw, catalog, needle):
    cat = tmp_path / "c.csv"
    cat.write_text(catalog)
    res, out = run_prepare(tmp_path, tiny_raw[0], cat)
    assert_clean_failure(res, out, needle)


def test_misnamed_column_option(tmp_path, tiny_raw):
    res, out = run_prepare(tmp_path, *tiny_raw, "--user-col", "uid_missing")
    assert_clean_failure(res, out, "no column 'uid_missing'")


def test_broken_config_yaml(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("interactions: [unclosed\n")
    res = CliRunner().invoke(main, ["data", "prepare", "--config", str(bad)])
    assert res.exit_code == 2 and "not valid YAML" in res.output
    bad.write_text("no_such_key: 1\n")
    res = CliRunner().invoke(main, ["data", "prepare", "--config", str(bad)])
    assert res.exit_code == 2 and "unknown config key 'no_such_key'" in res.output


def test_hashed_user_ids_leave_no_raw_id_in_any_artefact(tmp_path, tiny_raw):
    """Prepare with --hash-user-ids, then train with checkpoints: no raw user id and not the salt in any file."""
    import re

    from conftest import tiny_sft_config

    from genrec.train.recipe import train

    # Distinctive raw ids, so a search of every written byte cannot be fooled by numbers that are item ids.
    header, *rows = tiny_raw[0].read_text(encoding="utf-8").splitlines()
    inter = tmp_path / "ratings.csv"
    inter.write_text("\n".join([header] + [f"person-{r.split(',', 1)[0]}-x,{r.split(',', 1)[1]}" for r in rows]) + "\n")
    raw_ids = {r.split(",", 1)[0] for r in inter.read_text().splitlines()[1:]}
    salt = "pepper-0123456789"
    res, out = run_prepare(tmp_path, inter, tiny_raw[1], "--hash-user-ids", "--user-id-salt", salt)
    assert res.exit_code == 0, res.output
    users = load_prepared(out).users
    assert len(users) == len(raw_ids) and not set(users) & raw_ids
    assert all(re.fullmatch(r"[0-9a-f]{16}", u) for u in users)
    res2, out2 = run_prepare(tmp_path / "again", inter, tiny_raw[1], "--hash-user-ids", "--user-id-salt", salt)
    assert set(load_prepared(out2).users) == set(users)  # same salt, same pseudonyms
    model = tmp_path / "model"
    train(tiny_sft_config(out, model, max_steps=2, save_steps=1), log=lambda m: None)
    files = [p for p in list(out.rglob("*")) + list(model.rglob("*")) if p.is_file()]
    assert any(p.name == "adapter_model.safetensors" for p in files) and any("checkpoint-" in str(p) for p in files)
    for path in files:
        blob = path.read_bytes()
        assert salt.encode() not in blob and b"person-" not in blob, path


def test_derived_time_context_follows_the_target_timestamp(tmp_path, tiny_raw):
    import datetime as dt

    from genrec.config import DataConfig
    from genrec.data.prepared import load_prepared
    from genrec.data.prepare import prepare

    out = tmp_path / "ctx"
    prepare(DataConfig(interactions=str(tiny_raw[0]), catalog=str(tiny_raw[1]), output=str(out),
                       min_item_interactions=1, derive_context=["time_of_day", "day_of_week"]), log=lambda m: None)
    rows = load_prepared(out).split("test")
    for row in rows:
        ctx = json.loads(row["context"])
        t = dt.datetime.fromtimestamp(row["target_ts"], dt.UTC)
        assert ctx["day_of_week"] == t.strftime("%A")
        assert ctx["time_of_day"] == {0: "night", 1: "morning", 2: "afternoon", 3: "evening"}[t.hour // 6]
    assert len({json.loads(r["context"])["time_of_day"] for r in rows}) > 1
    with pytest.raises(GenrecError, match="unknown derived context 'weather'"):
        prepare(DataConfig(interactions=str(tiny_raw[0]), catalog=str(tiny_raw[1]), output=str(tmp_path / "x"),
                           derive_context=["weather"]), log=lambda m: None)


def test_context_reaches_the_prompt(tokenizer, tmp_path, tiny_raw):
    from genrec.config import DataConfig, PromptConfig
    from genrec.data.prepared import load_prepared
    from genrec.data.prepare import prepare
    from genrec.items.index import ItemIndex
    from genrec.prompts.sequence import make_builder

    out = tmp_path / "ctx"
    prepare(DataConfig(interactions=str(tiny_raw[0]), catalog=str(tiny_raw[1]), output=str(out),
                       min_item_interactions=1, derive_context=["time_of_day"]), log=lambda m: None)
    data = load_prepared(out)
    b = make_builder(tokenizer, PromptConfig(), data.catalog, ItemIndex.build(list(data.catalog.values())))
    row = data.split("test")[0]
    text = b.as_text(b.encode(row["history"], row["history_ts"], json.loads(row["context"])))
    assert f"Context: time_of_day={json.loads(row['context'])['time_of_day']}" in text


def test_min_rating_keep_cold_items_and_no_titles(tmp_path):
    """Hand-made files: min_rating keeps exactly the interactions rated at least it; keep_cold_items keeps the
    catalog items nobody interacted with (and only then); --title-col none makes the ids stand in as titles."""
    inter = tmp_path / "i.csv"
    rows = [(u, i, i, 5 if (u + i) % 3 else 1) for u in range(6) for i in range(7)]
    inter.write_text("user_id,item_id,timestamp,rating\n" + "".join(f"u{u},{i},{t},{r}\n" for u, i, t, r in rows))
    cat = tmp_path / "c.csv"
    cat.write_text("item_id,title,genre\n" + "".join(f"{i},Film {i},g{i % 2}\n" for i in range(9)))
    common = ["--min-item-interactions", "1", "--min-user-interactions", "3"]

    def prep(name: str, *extra: str):
        out = tmp_path / name
        res = CliRunner().invoke(main, ["data", "prepare", "--interactions", str(inter), "--catalog", str(cat),
                                        "--output", str(out), *common, *extra])
        assert res.exit_code == 0, res.output
        return load_prepared(out)

    plain, rated, cold, untitled = prep("plain"), prep("rated", "--min-rating", "4"), \
        prep("cold", "--keep-cold-items"), prep("untitled", "--title-col", "none")
    assert sum(len(u["items"]) for u in plain.users.values()) == len(rows)
    kept = {(f"u{u}", str(i)) for u, i, _, r in rows if r >= 4}
    assert {(uid, i) for uid, u in rated.users.items() for i in u["items"]} == kept
    assert set(plain.catalog) == {str(i) for i in range(7)}
    assert set(cold.catalog) == {str(i) for i in range(9)}  # items 7 and 8: in the catalog, never interacted with
    assert plain.catalog["3"]["title"] == "Film 3" and untitled.catalog["3"]["title"] == "3"


def test_cold_items_leave_training_and_validation_and_only_test_targets_keep_them(tmp_path, tiny_raw):
    """`--cold-items 0.2`: a seeded fifth of the items has no interaction before any user's last one, stays in the
    catalog, and the users whose test target is cold are counted; the same seed picks the same items."""
    res, out = run_prepare(tmp_path, *tiny_raw, "--cold-items", "0.2")
    assert res.exit_code == 0, res.output
    d = load_prepared(out)
    plain = load_prepared(run_prepare(tmp_path / "p", *tiny_raw)[1])
    cold = d.cold_items
    assert len(cold) == round(0.2 * len(plain.catalog)) and cold <= set(d.catalog) and set(d.catalog) == set(plain.catalog)
    for user in d.users.values():
        assert not set(user["items"][:-1]) & cold  # training part and validation target: never cold
    for split in ("train", "valid"):
        for row in d.split(split):
            assert row["target"] not in cold and not set(row["history"]) & cold
    test_cold = [r for r in d.split("test") if r["target"] in cold]
    assert test_cold and d.manifest["counts"]["cold_test_targets"] == len(test_cold)
    assert d.manifest["counts"]["cold_items"] == len(cold) and "cold items:" in res.output
    assert not d.training_counts().keys() & cold
    again = load_prepared(run_prepare(tmp_path / "again", *tiny_raw, "--cold-items", "0.2")[1])
    assert again.cold_items == cold and plain.cold_items == frozenset()
    for share, seed in ((0.05, 1), (0.5, 2), (0.3, 3)):  # any share and seed: never a cold item before the target
        o = tmp_path / f"s{seed}"
        prepare(DataConfig(interactions=str(tiny_raw[0]), catalog=str(tiny_raw[1]), output=str(o),
                           min_item_interactions=1, cold_items=share, seed=seed), log=lambda m: None)
        p = load_prepared(o)
        assert p.cold_items and all(not set(u["items"][:-1]) & p.cold_items for u in p.users.values())
        assert all(r["target"] not in p.cold_items for r in p.split("valid"))
    (tmp_path / "bad").mkdir()
    bad, bad_out = run_prepare(tmp_path / "bad", *tiny_raw, "--cold-items", "1.5")
    assert_clean_failure(bad, bad_out, "cold_items must be in [0, 1)")


def test_split_positions_and_readers_share_one_leave_one_out():
    """What preparation writes as each split's targets is what PreparedData reads back as targets and history."""
    from genrec.data.prepared import PreparedData

    for n in range(PreparedData.MIN_SEQUENCE, 8):
        user = {"items": [f"i{k}" for k in range(n)]}
        pos = PreparedData.target_positions(n)
        for split in ("valid", "test"):
            (t,) = pos[split]
            assert user["items"][t] == PreparedData.target(user, split)
            assert user["items"][:t] == PreparedData.before_target(user, split)
        assert [user["items"][t] for t in pos["train"]] == PreparedData.train_items(user)[1:]


def test_overwrite_replaces_only_a_prepared_dataset(tmp_path, tiny_raw):
    """`data prepare --overwrite` over a directory genrec did not write is refused before any work and leaves it
    as it was; over a prepared dataset it replaces it."""
    inter, cat = tiny_raw
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    res, _ = run_prepare(tmp_path, inter, cat, "--overwrite")
    assert res.exit_code == 2 and "is not a prepared genrec dataset" in res.output, res.output
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and (out / "thesis.tex").read_text() == "years of work"
    (out / "thesis.tex").unlink()
    res, _ = run_prepare(tmp_path, inter, cat, "--overwrite")  # an empty directory
    assert res.exit_code == 0, res.output
    res, _ = run_prepare(tmp_path, inter, cat, "--overwrite")  # a prepared dataset
    assert res.exit_code == 0 and load_prepared(out).users, res.output


def test_a_kill_between_the_swaps_renames_loses_nothing(tmp_path, tiny_raw):
    """A run killed between the two renames of its swap leaves the old dataset at `.out.old` and nothing at `out`:
    the next write to `out` puts it back first (without --overwrite: refused, the old dataset whole in place)."""
    inter, cat = tiny_raw
    res, out = run_prepare(tmp_path, inter, cat)
    assert res.exit_code == 0, res.output
    def files():
        return sorted((str(p.relative_to(out)), p.read_bytes()) for p in out.rglob("*") if p.is_file())

    before = files()
    out.rename(tmp_path / ".out.old")  # the state a kill between the renames leaves
    res, _ = run_prepare(tmp_path, inter, cat)
    assert res.exit_code == 2 and "already exists" in res.output, res.output
    assert files() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    res, _ = run_prepare(tmp_path, inter, cat, "--overwrite")
    assert res.exit_code == 0 and load_prepared(out).users, res.output
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
