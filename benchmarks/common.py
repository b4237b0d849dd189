"""Shared helpers for the benchmark scripts: machine facts and writing results as JSON + a Markdown table."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # committed: docs/results.md is rendered from these files
STARTED = time.time()
_LOAD: list[float] = []  # the 1-minute load average, sampled every 15 s while the benchmark runs


def _sample_load() -> None:
    while True:
        _LOAD.append(os.getloadavg()[0])
        time.sleep(15)


threading.Thread(target=_sample_load, daemon=True, name="load-sampler").start()


def bench_data() -> Path:
    """The folder holding the benchmark datasets (movielens_latest_small, unisrec_amazon18_scientific,
    lcrec_amazon18_instruments, ...): $GENREC_BENCH_DATA. They are not shipped with genrec."""
    root = os.environ.get("GENREC_BENCH_DATA")
    if not root or not Path(root).is_dir():
        raise SystemExit("error: set GENREC_BENCH_DATA to the folder holding the benchmark datasets "
                         "(movielens_latest_small, unisrec_amazon18_scientific, lcrec_amazon18_instruments, ...)")
    return Path(root)


def movielens_raw(work: Path, max_tags: int = 3) -> tuple[Path, Path]:
    """ml-latest-small ratings as they are; movies with genres plus each movie's most frequent free-text tags."""
    src = bench_data() / "movielens_latest_small"
    work.mkdir(parents=True, exist_ok=True)
    tags: dict[str, dict[str, int]] = {}
    with gzip.open(src / "tags.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            t = " ".join(row["tag"].split()).lower()
            tags.setdefault(row["movieId"], {})[t] = tags.get(row["movieId"], {}).get(t, 0) + 1
    with gzip.open(src / "movies.csv.gz", "rt", encoding="utf-8", newline="") as fh, \
            open(work / "movies.csv", "w", newline="", encoding="utf-8") as out:
        w = csv.writer(out)
        w.writerow(["movieId", "title", "genres", "tags"])
        for row in csv.DictReader(fh):
            top = sorted(tags.get(row["movieId"], {}).items(), key=lambda kv: (-kv[1], kv[0]))[:max_tags]
            genres = "" if row["genres"] == "(no genres listed)" else row["genres"]
            w.writerow([row["movieId"], row["title"], genres, "|".join(t for t, _ in top)])
    return src / "ratings.csv.gz", work / "movies.csv"


def scientific_raw(work: Path) -> tuple[Path, Path]:
    """UniSRec Scientific: items with title, category path and brand parsed from its text field; sequences
    rebuilt from its test rows (history <= 50 + target), positions standing in for times."""
    src = bench_data() / "unisrec_amazon18_scientific"
    work.mkdir(parents=True, exist_ok=True)
    idx2asin = {}
    with gzip.open(src / "Scientific.item2index.gz", "rt") as fh:
        for line in fh:
            asin, idx = line.rstrip("\n").split("\t")
            idx2asin[idx] = asin
    with gzip.open(src / "Scientific.text.gz", "rt") as fh, open(work / "items.csv", "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["item_id", "title", "category", "brand"])
        next(fh)
        for line in fh:
            asin, text = line.rstrip("\n").split("\t", 1)
            parts = text.strip().removesuffix(".").rsplit(". ", 2)  # "<title>. <category path>. <brand>."
            title, category, brand = (parts + ["", ""])[:3] if len(parts) < 3 else parts
            category = category.removeprefix("Industrial & Scientific").strip()
            w.writerow([asin, title.strip() or asin, category, brand.strip()])
    with gzip.open(src / "Scientific.test.inter.gz", "rt") as fh, open(work / "inter.csv", "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["user_id", "item_id", "timestamp"])
        next(fh)
        for line in fh:
            user, hist, target = line.rstrip("\n").split("\t")
            for t, idx in enumerate(hist.split() + [target]):
                w.writerow([user, idx2asin[idx], t])
    return work / "inter.csv", work / "items.csv"


def lcrec_raw(work: Path, name: str) -> tuple[Path, Path]:
    """LC-Rec Instruments/Games: full chronological sequences (positions stand in for times), items named by
    their ASIN (never LC-Rec's index, which numbers items in order of first appearance), no item text."""
    folder = {"instruments": "lcrec_amazon18_instruments", "games": "lcrec_amazon18_games"}[name]
    stem = name.capitalize()
    src = bench_data() / folder
    work.mkdir(parents=True, exist_ok=True)
    with gzip.open(src / f"{stem}.item2id.gz", "rt") as fh:
        asin = {idx: a for a, idx in (line.rstrip("\n").split("\t") for line in fh)}
    with gzip.open(src / f"{stem}.inter.json.gz", "rt") as fh:
        seqs = json.load(fh)
    with open(work / "inter.csv", "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["user_id", "item_id", "timestamp"])
        for user, items in seqs.items():
            for t, idx in enumerate(items):
                w.writerow([user, asin[str(idx)], t])
    with open(work / "items.csv", "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["item_id"])
        w.writerows([a] for a in sorted(asin.values()))
    return work / "inter.csv", work / "items.csv"


def parser(doc: str, **shared) -> argparse.ArgumentParser:
    """argparse with the benchmark's docstring as its help; `shared` adds options many benchmarks take, with the
    default given: model (a model directory), users, k, history, batch_size."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = {"model": "model directory written by `genrec sft`", "users": "users evaluated (a seeded sample)",
             "k": "items per list", "history": "prompt.max_history", "batch_size": "users per batch"}
    for name, default in shared.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default, help=helps[name])
    return ap


def bench_parser(doc: str, datasets: str | None, steps: int, work: str, users: int = 100,
                 **own: dict) -> argparse.ArgumentParser:
    """The options every step-budget quality benchmark shares, and its `own` (option name -> add_argument's keyword
    arguments, e.g. styles={"help": ...})."""
    ap = parser(doc, users=users)
    for name, kwargs in own.items():
        ap.add_argument("--" + name.replace("_", "-"), **kwargs)
    if datasets:
        ap.add_argument("--datasets", default=datasets)
    ap.add_argument("--steps", type=int, default=steps, help="optimizer steps per fine-tune (the same for every arm)")
    ap.add_argument("--sasrec-seconds", type=float, default=120.0)
    ap.add_argument("--work", default=work)
    ap.add_argument("--name", default=Path(work).name, help="results file stem under benchmarks/results/")
    return ap


def arms_parser(doc: str, datasets: str, arms: str, minutes: float, history: int, work: str) -> argparse.ArgumentParser:
    """The options of the minute-budget benchmarks whose arms are reused across sessions (bench_quality,
    bench_hybrid): datasets, arms, minutes per LLM arm, the LLM's test users, history, item facts, where to work."""
    ap = parser(doc, users=610, history=history)
    ap.add_argument("--datasets", default=datasets)
    ap.add_argument("--arms", default=arms)
    ap.add_argument("--minutes", type=float, default=minutes, help="training minutes of each LLM arm (the same "
                    "for each)")
    ap.add_argument("--facts", default="", help="prompt.item_facts ('' = titles only)")
    ap.add_argument("--work", default=work)
    ap.add_argument("--name", default=Path(work).name, help="results file stem under benchmarks/results/")
    return ap


# genrec's defaults before they became the item-token recipe: what the step-budget and title benchmarks measured
# (titles, one prompt per history prefix, the whole model, no regularisers); their arms state what else they change
TITLE_RECIPE = dict(item_id="title", objective="prefix", layers=None, max_minutes=None, num_epochs=1.0,
                    embedding_dropout=0.0, item_weight_decay=0.0)


def timed_sft(data: Path, out: Path, steps: int, **settings) -> float:
    """Fine-tune for `steps` steps with no intermediate checkpoints (TITLE_RECIPE unless `settings` say otherwise);
    the seconds it took."""
    from genrec.config import SFTConfig
    from genrec.train.recipe import train

    t0 = time.time()
    train(SFTConfig(data=str(data), output=str(out), overwrite=True, max_steps=steps, save_steps=10**6,
                    **{**TITLE_RECIPE, **settings}))
    return round(time.time() - t0, 1)


def each_dataset(args: argparse.Namespace, report: dict):
    """(name, its work directory, its part of the report) per --datasets entry, each prepared first."""
    work = Path(args.work)
    for name in args.datasets.split(","):
        prepare_shared(name, work)
        yield name, work / name, report["datasets"].setdefault(name, {})


def start_report(args: argparse.Namespace) -> dict:
    return {**{k: v for k, v in vars(args).items() if k not in ("work", "name")}, "machine": machine(),
            "datasets": {}}


def prepare_shared(name: str, work: Path, **options) -> Path:
    """A shared dataset prepared under work/<name>/data: movielens, scientific (item text), instruments or games
    (no item text: item ids stand in for titles)."""
    from genrec.config import DataConfig
    from genrec.data.prepare import prepare

    d = work / name
    if name in ("instruments", "games"):
        inter, cat = lcrec_raw(d / "raw", name)
        options = {"title_col": "none", "max_history": 20, **options}
    else:
        inter, cat = {"movielens": movielens_raw, "scientific": scientific_raw}[name](d / "raw")
    prepare(DataConfig(interactions=str(inter), catalog=str(cat), output=str(d / "data"), overwrite=True, **options))
    return d / "data"


def dataset_arms(work: Path, datasets: str, arms: str, known: tuple[str, ...], cold_items: float = 0.0):
    """(dataset name, prepared data dir, arm index, arm) for every comma-separated dataset and arm: each shared
    dataset prepared once under work/<name>/data (bench_quality's protocol: users with >= 3 interactions, no
    k-core), unknown arms refused before anything runs."""
    chosen = [a for a in arms.split(",") if a]
    for arm in chosen:
        if arm not in known:
            raise SystemExit(f"unknown arm {arm} ({', '.join(known)})")
    for name in datasets.split(","):
        data = work / name / "data"
        if not (data / "manifest.json").is_file():
            prepare_shared(name, work, min_user_interactions=3, min_item_interactions=1, cold_items=cold_items)
        for n, arm in enumerate(chosen):
            yield name, data, n, arm


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor(), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """Achievable fp32 GEMM rate on this machine: the roofline the benchmarks compare against."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n ** 3 * repeat / (time.perf_counter() - t) / 1e9


def learning_curve(model: Path, out: Path, users: int, split: str = "valid") -> list[dict]:
    """NDCG@10 of `users` seeded users of `split` at each kept checkpoint and at the end (a rerank model learns from
    the validation items: use test). Written to out/curve.json and curve.png; finished points are reused."""
    from genrec.config import EvaluateConfig
    from genrec.eval.protocol import run_evaluation
    from genrec.files import read_json
    from genrec.model_dir import CLOCK, ModelCard, checkpoint_step, checkpoints

    points = sorted(checkpoints(model), key=checkpoint_step) + [model]
    final = ModelCard.load(model).stats
    curve = []
    for p in points:
        step = checkpoint_step(p) if p != model else final["global_step"]
        dest = out / f"step-{step}"
        if not (dest / "metrics.json").is_file():
            run_evaluation(EvaluateConfig(model=str(model), adapter=None if p == model else str(p), max_users=users,
                                          ks=[10], baselines=[], split=split, output=str(dest)))
        iv = read_json(dest / "metrics.json")["intervals"]
        clock = p / CLOCK  # training minutes at the checkpoint (max_minutes runs), else at the end
        seconds = read_json(clock)["seconds"] if clock.is_file() else final["train_seconds"] if p == model else None
        curve.append({"step": step, "minutes": None if seconds is None else round(seconds / 60, 2),
                      **{n: iv[n]["NDCG@10"] for n in iv}})
    (out / "curve.json").write_text(json.dumps(curve, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = "minutes" if all(c["minutes"] is not None for c in curve) else "step"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in (n for n in curve[0] if n not in ("step", "minutes")):
        ax.errorbar([c[x] for c in curve], [c[name]["mean"] for c in curve], capsize=3, marker="o", label=name,
                    yerr=[[c[name]["mean"] - c[name]["lo"] for c in curve], [c[name]["hi"] - c[name]["mean"]
                                                                           for c in curve]])
    ax.set_xlabel("training minutes" if x == "minutes" else "training step")
    ax.set_ylabel(f"NDCG@10 ({users} {split} users, 95% CI)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=100)
    plt.close(fig)
    return curve


def paired_arms(work: Path, datasets: list[str], cold: dict[str, frozenset] | None = None) -> dict:
    """Arm minus arm, for every two finished arms of one dataset (work/<dataset>/<arm>/eval-test/
    recommendations.jsonl, from this run or an earlier one) whose evaluations hold the same users with the same
    targets: the paired bootstrap difference of their per-user metrics (seeded draws, as the reports use)."""
    from genrec import metrics
    from genrec.files import read_jsonl

    out = {}
    for name in datasets:
        arms = {}  # arm -> (its users and targets, its per-user metrics), each computed once
        for p in sorted((work / name).glob("*/eval-test/recommendations.jsonl")):
            rows = read_jsonl(p)
            targets = [r["target"] for r in rows]
            arms[f"{name}/{p.parent.parent.name}"] = ([(r["user_id"], r["target"]) for r in rows], metrics.per_user(
                metrics.target_ranks([r["recommended"] for r in rows], targets), [10]))
        keys = sorted(arms)
        for n, a in enumerate(keys):
            for b in keys[n + 1:]:
                (users, per_a), (users_b, per_b) = arms[a], arms[b]
                if users == users_b:
                    draws = metrics.bootstrap_draws(len(users), seed=42)
                    out[f"{a} - {b}"] = {"users": len(users), **metrics.paired_difference(per_a, per_b, draws)}
                    held = (cold or {}).get(name)
                    if held:  # the cold-item protocol: the same difference on the users whose target is cold
                        import numpy as np

                        sel = np.array([n for n, (_, t) in enumerate(users) if t in held])
                        if len(sel):
                            pa = {m: v[sel] for m, v in per_a.items()}
                            pb = {m: v[sel] for m, v in per_b.items()}
                            out[f"{a} - {b} [cold targets]"] = {"users": len(sel), **metrics.paired_difference(
                                pa, pb, metrics.bootstrap_draws(len(sel), seed=42))}
    return out


def provenance() -> dict:
    """What a reader needs to trust and rerun a result: the command, the commit (and whether the tree differed from
    it), the date, the wall and CPU minutes so far, and the machine's load while it ran (the 1-minute load average,
    which counts this benchmark's own threads too: ~2 on 2 cores is an otherwise idle machine)."""
    def git(*a):
        r = subprocess.run(["git", *a], capture_output=True, text=True, cwd=RESULTS.parent.parent)
        return r.stdout.strip() if r.returncode == 0 else None

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    module = Path(sys.argv[0]).stem
    return {
        "command": " ".join(["python -m benchmarks." + module, *sys.argv[1:]]),
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "tree_differs": bool(git("status", "--porcelain", "--", "genrec", "benchmarks", "prompts")),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_minutes": round((time.time() - STARTED) / 60, 1),
        "cpu_minutes": round((own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime) / 60, 1),
        "cpu_count": os.cpu_count(),
        "load_mean": round(sum(_LOAD) / len(_LOAD), 2) if _LOAD else None,
        "load_max": round(max(_LOAD), 2) if _LOAD else None,
    }


def markdown_table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(c for r in rows for c in r))  # rows of several kinds: every column, "" if absent
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols)
           + " |" for r in rows]
    return "\n".join(md) + "\n"


def write_results(name: str, results: dict, rows: list[dict], out_dir: str | Path = RESULTS) -> Path:
    """benchmarks/results/<name>.json: the results, the table rows docs/results.md shows, and their provenance.
    Written after each arm (atomically), so a long run keeps what it finished; `python -m benchmarks.report`
    renders the page from these files."""
    from genrec.files import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = (sys.modules["__main__"].__doc__ or "").strip()
    write_json(out / f"{name}.json", {**results, "title": doc.split("\n\n")[0].replace("\n", " "),
                                      "provenance": provenance(), "rows": rows})  # the table's rows win a name clash
    if rows:
        print(markdown_table(rows), end="")
    print(f"wrote {out / name}.json")
    return out
