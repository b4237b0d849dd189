"""`genrec generate` at scale: a large users file (for example every user of Instruments, 24,772) generated on each
backend in --shards parts (`--shard I/N`, one process each, one after another: what N machines would do at once),
then `genrec merge-shards`. Reports per backend the users/s over the shards' summed wall time, each shard's peak
memory (the process tree's RSS, engine processes included, sampled every 0.2 s), and whether the outputs agree:
every users-file line present once after the merge, and the two backends' merged files giving the same items in
the same order for every user (and the largest score difference).

    python -m benchmarks.bench_shards --model runs/bb/instruments/token --data runs/bb/instruments/data --shards 2
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine, parser, write_results


def users_file(data: Path, out: Path, limit: int | None) -> int:
    """Every test user of a prepared dataset as a users file of user_ids (the model's data resolves them)."""
    from genrec.data.prepared import load_prepared

    rows = list(load_prepared(data).split("test"))[:limit]
    out.write_text("".join(json.dumps({"user_id": r["user_id"]}) + "\n" for r in rows))
    return len(rows)


def run_tree(cmd: list[str]) -> tuple[float, float, str]:
    """Run `cmd`; its wall seconds, the peak RSS (GiB) of it and its descendants together, and its stderr tail."""
    import psutil

    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-1500:]}")
    return time.time() - t0, peak / 2**30, err[-300:]


def generate_sharded(model: Path, users: Path, work: Path, backend: str, shards: int, k: int) -> dict:
    parts, walls, peaks = [], [], []
    for i in range(shards):
        part = work / f"{backend}-{i}of{shards}.jsonl"
        cmd = [sys.executable, "-m", "genrec.cli", "generate", "--model", str(model), "--users", str(users),
               "--out", str(part), "--backend", backend, "--k", str(k), "--shard", f"{i}/{shards}",
               "--overwrite", "--batch-size", "32"]
        wall, peak, _ = run_tree(cmd)
        parts.append(part)
        walls.append(wall)
        peaks.append(peak)
        print(f"{backend} shard {i}/{shards}: {wall:.0f}s, peak {peak:.2f} GiB", flush=True)
    merged = work / f"{backend}-merged.jsonl"
    subprocess.run([sys.executable, "-m", "genrec.cli", "merge-shards", *map(str, parts), "--out", str(merged)],
                   check=True, capture_output=True)
    return {"merged": merged, "wall_s": [round(w, 1) for w in walls], "peak_rss_gib": [round(p, 2) for p in peaks]}


def agreement(a: Path, b: Path) -> tuple[int, int, float]:
    """Lines in both, lines with the same items in the same order, the largest score difference."""
    la = [json.loads(x) for x in a.read_text().splitlines()]
    lb = [json.loads(x) for x in b.read_text().splitlines()]
    same, worst = 0, 0.0
    for x, y in zip(la, lb):
        ix, iy = [r["item_id"] for r in x["recommendations"]], [r["item_id"] for r in y["recommendations"]]
        same += ix == iy
        worst = max([worst] + [abs(p["score"] - q["score"]) for p, q in zip(x["recommendations"],
                                                                           y["recommendations"])])
    return min(len(la), len(lb)), same, worst


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", required=True, help="a model directory written by `genrec sft`")
    ap.add_argument("--data", required=True, help="its prepared data (the test users are generated for)")
    ap.add_argument("--users", type=int, default=None, help="at most this many users (default: every test user)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--work", default="runs/bench_shards")
    ap.add_argument("--name", default="bench_shards", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    n = users_file(Path(args.data), work / "users.jsonl", args.users)
    out, rows = {}, []
    for backend in args.backends.split(","):
        r = generate_sharded(Path(args.model), work / "users.jsonl", work, backend, args.shards, args.k)
        lines = len(r["merged"].read_text().splitlines())
        if lines != n:  # merge-shards refuses overlaps; a missing line would be a lost user
            raise SystemExit(f"{backend}: {lines} lines after merging {args.shards} shards of {n} users")
        out[backend] = {**{k: v for k, v in r.items() if k != "merged"}, "lines": lines,
                        "users_per_s": round(n / sum(r["wall_s"]), 1)}
        rows.append({"backend": backend, "users": n, "shards": args.shards, "lines out": lines,
                     "users/s (summed shard wall, engine start included)": out[backend]["users_per_s"],
                     "peak RSS per shard (GiB)": max(r["peak_rss_gib"])})
    names = args.backends.split(",")
    if len(names) == 2:
        both, same, worst = agreement(work / f"{names[0]}-merged.jsonl", work / f"{names[1]}-merged.jsonl")
        out["agreement"] = {"lines": both, "same_lists": same, "max_score_diff": worst}
        rows.append({"backend": f"{names[0]} vs {names[1]}", "users": both, "shards": "",
                     "lines out": f"same top-{args.k}: {same}", "users/s (summed shard wall, engine start included)":
                     "", "peak RSS per shard (GiB)": f"max score diff {worst:.1e}"})
    res = {"machine": machine(), "settings": vars(args), "users": n, "results": out}
    write_results(args.name, res, rows)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
