"""The benchmarks stay runnable: each one imports as a module of the `benchmarks` package (no sys.path tricks) and
answers --help; their shared helpers write a report as JSON + Markdown."""

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


def test_write_results_writes_json_and_a_table_with_every_column(tmp_path):
    from benchmarks.common import write_results

    write_results("x", {"a": 1}, [{"model": "m", "NDCG@10": 0.123456}, {"model": "n", "extra": "e"}], str(tmp_path))
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    lines = (tmp_path / "x.md").read_text().splitlines()
    assert lines[0] == "| model | NDCG@10 | extra |" and lines[2] == "| m | 0.1235 |  |" and lines[3] == "| n |  | e |"

