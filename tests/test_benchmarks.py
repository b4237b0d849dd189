"""The benchmarks stay runnable: each one imports as a module of the `benchmarks` package (no sys.path tricks) and
answers --help; their shared helpers write results as JSON with provenance, and docs/results.md is rendered from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))


def test_every_benchmark_is_a_module_that_answers_help():
    assert len(BENCHES) >= 10
    code = ("import contextlib, importlib, io, sys\n"
            f"for name in {BENCHES!r}:\n"
            "    mod = importlib.import_module('benchmarks.' + name)\n"
            "    sys.argv = [name, '--help']\n"
            "    out = io.StringIO()\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(out):\n"
            "            mod.main()\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, (name, e.code)\n"
            "    assert 'usage:' in out.getvalue(), name\n"
            "    print(name, 'ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split().count("ok") == len(BENCHES)
    assert "sys.path" not in "".join((ROOT / "benchmarks" / f"{b}.py").read_text() for b in BENCHES)


def test_write_results_writes_json_with_its_provenance_and_a_table_with_every_column(tmp_path):
    from benchmarks.common import markdown_table, write_results

    rows = [{"model": "m", "NDCG@10": 0.123456}, {"model": "n", "extra": "e"}]
    write_results("x", {"a": 1}, rows, tmp_path)
    doc = json.loads((tmp_path / "x.json").read_text())
    assert doc["a"] == 1 and doc["rows"] == rows
    p = doc["provenance"]
    assert p["command"].startswith("python -m benchmarks.") and len(p["commit"]) == 12 and p["cpu_count"] >= 1
    assert p["cpu_minutes"] >= 0 and p["date"].endswith("UTC") and isinstance(p["tree_differs"], bool)
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| model | NDCG@10 | extra |" and lines[2] == "| m | 0.1235 |  |" and lines[3] == "| n |  | e |"


def test_the_results_page_is_what_the_committed_result_files_render(tmp_path):
    """docs/results.md is generated: a number edited by hand there, or a result file without its page, fails."""
    from benchmarks.report import PAGE, render

    assert PAGE.read_text(encoding="utf-8") == render(), "run `python -m benchmarks.report` and commit docs/results.md"
    assert list((ROOT / "benchmarks" / "results").glob("*.json"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.report", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # a different result file changes the page, and --check says so (on a copy: the repository is not touched)
    (tmp_path / "r").mkdir()
    for f in (ROOT / "benchmarks" / "results").glob("*.json"):
        doc = json.loads(f.read_text())
        doc["rows"] = doc["rows"][:1]
        (tmp_path / "r" / f.name).write_text(json.dumps(doc))
    assert render(tmp_path / "r") != render()


def test_paired_arms_compares_arms_on_the_same_users_only(tmp_path):
    """Two arms of one dataset with the same users and targets get arm-minus-arm (here: a hit at rank 1 for every
    user against a miss for half of them, NDCG@10 +0.5); an arm of other users, or of another dataset, is skipped."""
    from benchmarks.common import paired_arms
    from genrec.files import write_jsonl

    def arm(key, rows):
        (tmp_path / key / "eval-test").mkdir(parents=True)
        write_jsonl(tmp_path / key / "eval-test" / "recommendations.jsonl", rows)

    users = [{"user_id": f"u{n}", "target": f"i{n}"} for n in range(40)]
    arm("d/a", [{**u, "recommended": [u["target"], "x"]} for u in users])
    arm("d/b", [{**u, "recommended": ["x", "y"] if n % 2 else [u["target"]]} for n, u in enumerate(users)])
    arm("d/c", [{**u, "recommended": ["x"]} for u in users[:39]])
    arm("e/a", [{**u, "recommended": ["x"]} for u in users])
    out = paired_arms(tmp_path, ["d", "e"])
    assert set(out) == {"d/a - d/b"}
    d = out["d/a - d/b"]
    assert d["users"] == 40 and abs(d["NDCG@10"]["diff"] - 0.5) < 1e-9 and d["NDCG@10"]["excludes_zero"]
    assert abs(d["HR@10"]["diff"] - 0.5) < 1e-9
    # the cold-item protocol: the same difference on the users whose target is cold (here the odd users, whom
    # arm b always misses: +1.0 on those 20)
    cold = paired_arms(tmp_path, ["d", "e"], {"d": frozenset(f"i{n}" for n in range(1, 40, 2))})
    c = cold["d/a - d/b [cold targets]"]
    assert c["users"] == 20 and abs(c["NDCG@10"]["diff"] - 1.0) < 1e-9 and cold["d/a - d/b"] == d


def test_every_interval_the_readme_quotes_is_on_the_generated_results_page():
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    quoted = re.findall(r"\[[+-]?\d\.\d{4}, [+-]?\d\.\d{4}\]", readme)
    assert len(quoted) >= 6
    assert [q for q in quoted if q not in page] == []
    assert "../shared" not in readme
