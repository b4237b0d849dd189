"""What `genrec evaluate` leaves: metrics.md (tables, intervals, slices by user group, the verdict), metrics.png
and metrics.json, written by `write_report`, the one way an evaluation leaves its results."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from genrec import metrics
from genrec.config import EvaluateConfig
from genrec.files import atomic_file, write_json, write_jsonl
from genrec.model_dir import ModelCard


def markdown_table(results: dict[str, dict], ks: list[int]) -> str:
    cols = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR", "validity", "coverage"]
    cols += [c for c in ("ILD", "novelty", "pop_pct", "long_tail") if all(c in m for m in results.values())]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def scores_markdown(results: dict[str, dict], cols: list[str]) -> str:
    """The one table of a scoring task (preference, rating): a model's row leaves blank the columns it lacks."""
    return f"| model | {' | '.join(cols)} |\n|---|" + "---|" * len(cols) + "\n" + "".join(
        f"| {n} | " + " | ".join(f"{r[c]:.4f}" if c in r else "" for c in cols) + " |\n" for n, r in results.items())


def intervals_markdown(intervals: dict, paired: dict, k: int, n_users: int) -> str:
    """Means with 95% bootstrap intervals, and genrec minus each baseline on the same users (* = excludes 0)."""
    out = [f"95% bootstrap intervals ({n_users} users resampled, paired across models):\n",
           f"| model | NDCG@{k} | HR@{k} | MRR |", "|---|---|---|---|"]
    for n, s in intervals.items():
        out.append(f"| {n} | {metrics.fmt_ci(s[f'NDCG@{k}'])} | {metrics.fmt_ci(s[f'HR@{k}'])} | "
                   f"{metrics.fmt_ci(s['MRR'])} |")
    if paired:
        out += ["", f"| paired difference | NDCG@{k} | HR@{k} |", "|---|---|---|"]
        for n, d in paired.items():
            out.append(f"| {n} | {metrics.fmt_diff(d[f'NDCG@{k}'])} | {metrics.fmt_diff(d[f'HR@{k}'])} |")
    return "\n".join(out) + "\n"


def verdict(paired: dict, k: int, n_users: int) -> str:
    """One line saying what the comparison shows: better, worse, or not distinguishable on these users."""
    if not paired:
        return f"genrec was evaluated on {n_users} users; no baseline to compare with."
    parts = []
    for name, d in paired.items():
        if not name.startswith("genrec - "):
            continue
        x = d[f"NDCG@{k}"]
        word = ("better than" if x["lo"] > 0 else "worse than" if x["hi"] < 0 else "not distinguishable from")
        parts.append(f"{word} {name.removeprefix('genrec - ')} (NDCG@{k} {x['diff']:+.4f}, 95% CI "
                     f"[{x['lo']:+.4f}, {x['hi']:+.4f}])")
    return f"On these {n_users} users genrec is " + "; ".join(parts) + "."


HISTORY_BUCKETS = ((0, 10, "history <10"), (10, 51, "history 10-50"), (51, 10**9, "history >50"))


def user_slices(history_lengths: list[int], targets: list[str], counts: Counter, per_user: dict, models: dict,
                k: int, seed: int, cold_items: frozenset = frozenset(), pairs: list[tuple[str, str]] = ()) -> dict:
    """NDCG@k / HR@k with intervals per history-length bucket, per target-popularity tier and (cold-item protocol)
    for cold and warm targets, for every model, and each of `pairs` (a, b) as a paired difference a - b on the
    group's users: where the LLM helps (short histories, the tail, cold items) is what users of LLM recommenders
    want to know, and a group's own paired interval is what says whether it does."""
    import numpy as np

    tier = metrics.popularity_tiers(counts)
    groups = {"history_length": {name: [i for i, n in enumerate(history_lengths) if lo <= n < hi]
                                 for lo, hi, name in HISTORY_BUCKETS},
              "target_popularity": {t: [i for i, x in enumerate(targets) if tier.get(x, "tail") == t]
                                    for t in ("head", "torso", "tail")}}
    if cold_items:  # items held out of training (`genrec data prepare --cold-items`)
        groups["target"] = {"cold": [i for i, x in enumerate(targets) if x in cold_items],
                            "warm": [i for i, x in enumerate(targets) if x not in cold_items]}
    out: dict = {}
    for kind, gs in groups.items():
        out[kind] = {}
        for g, idx in gs.items():
            if not idx:
                continue
            draws = metrics.bootstrap_draws(len(idx), seed=seed)
            sel = np.array(idx)
            of = lambda name: {m: per_user[name][m][sel] for m in (f"NDCG@{k}", f"HR@{k}")}  # noqa: E731
            out[kind][g] = {"users": len(idx), "models": {name: metrics.summary(of(name), draws) for name in models}}
            if pairs:
                out[kind][g]["paired"] = {f"{a} - {b}": metrics.paired_difference(of(a), of(b), draws)
                                          for a, b in pairs}
    return out


def slices_markdown(slices: dict, k: int) -> str:
    first = next(iter(next(iter(slices.values())).values())) if slices else {"models": {}}
    names, pairs = list(first["models"]), list(first.get("paired", {}))
    lines = [f"NDCG@{k} by user group (95% bootstrap intervals; a - b: paired on the group's users, * excludes 0):\n",
             "| group | users | " + " | ".join(names + pairs) + " |", "|---|---|" + "---|" * len(names + pairs)]
    for kind, gs in slices.items():
        for g, s in gs.items():
            lines.append(f"| {g} | {s['users']} | " + " | ".join(
                [metrics.fmt_ci(s["models"][n][f"NDCG@{k}"]) for n in names] +
                [metrics.fmt_diff(s["paired"][p][f"NDCG@{k}"]) for p in pairs]) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(intervals: dict[str, dict], k: int, path: Path, title: str, slices: dict | None = None) -> None:
    """metrics.png: HR@k and NDCG@k per model with their intervals and, beside them, NDCG@k per user group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(intervals)
    fig, axes = plt.subplots(1, 2 if slices else 1, figsize=(12 if slices else 6, 3.5), squeeze=False)
    ax = axes[0][0]
    if slices:
        _slices_panel(axes[0][1], names, slices, k)
    x = range(len(names))
    for off, m in ((-0.2, f"HR@{k}"), (0.2, f"NDCG@{k}")):
        s = [intervals[n][m] for n in names]
        ax.bar([i + off for i in x], [v["mean"] for v in s], width=0.4, label=m,
               yerr=[[v["mean"] - v["lo"] for v in s], [v["hi"] - v["mean"] for v in s]], capsize=3)
    ax.set_xticks(list(x), names)
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def _slices_panel(sx, names: list[str], slices: dict, k: int) -> None:
    """NDCG@k per user group and model, with intervals."""
    groups = [(kind, g) for kind, gs in slices.items() for g in gs]
    width = 0.8 / max(len(names), 1)
    for m, name in enumerate(names):
        vals = [slices[kind][g]["models"][name][f"NDCG@{k}"] for kind, g in groups]
        sx.bar([i + (m - (len(names) - 1) / 2) * width for i in range(len(groups))], [v["mean"] for v in vals],
               width=width, label=name, capsize=2,
               yerr=[[v["mean"] - v["lo"] for v in vals], [v["hi"] - v["mean"] for v in vals]])
    sx.set_xticks(range(len(groups)), [f"{g}\n({slices[kind][g]['users']})" for kind, g in groups], fontsize=7)
    sx.set_title(f"NDCG@{k} by history length and target popularity (users)", fontsize=9)
    sx.legend(fontsize=7)
    sx.grid(axis="y", alpha=0.3)


def ranking_markdown(report: dict, cfg: EvaluateConfig, k: int) -> str:
    """metrics.md of a ranking evaluation: the protocol in one line, the table, the intervals and every extra
    section the report has (slices, baselines on all users, the retriever's ceiling, SASRec, perturbation,
    reasons)."""
    r = report
    parts = [f"Split `{cfg.split}`: {r['users_evaluated']}/{r['users_in_split']} users (seeded sample), full ranking "
             f"over {r['catalog_items']} items, exclude seen = {cfg.exclude_seen} (the target stays rankable; "
             f"{r['users_target_in_history']} users' target is also in their history). Test targets' mean popularity "
             f"percentile: {r['targets_pop_pct']:.3f}.\n\n{r['markdown']}\n\n", r["intervals_markdown"]]
    if r["slices"]:
        parts.append("\n" + slices_markdown(r["slices"], k))
    if r["baselines_all_users"]:
        parts.append(f"\nBaselines on all {r['users_in_split']} users of the split:\n\n| model | NDCG@{k} | HR@{k} |\n"
                     "|---|---|---|\n" + "".join(
                         f"| {n} | {metrics.fmt_ci(a['intervals'][f'NDCG@{k}'])} | "
                         f"{metrics.fmt_ci(a['intervals'][f'HR@{k}'])} |\n" for n, a in r["baselines_all_users"].items()))
    recall, sas = r["retriever_recall"], r["sasrec"]
    if recall:
        parts.append(f"\nHybrid ({r['hybrid']}, K={recall['k']}): the retriever's top {recall['k']} holds the "
                     f"target for {recall['llm_users']:.3f} of these users ({recall['users']:.3f} of all): the "
                     "ceiling of HR@K for any reranker of its candidates. genrec x sasrec: log p_LLM + "
                     f"{r['fusion']['weight']:g} x log softmax(SASRec) over the K" +
                     (f" + {r['fusion']['history_match']:g} x history match" if r["fusion"].get("history_match")
                      else "") + f" ({r['fusion']['source']}).\n")
    if sas:
        parts.append(f"\nSASRec ({sas['source']}): {sas['epochs']} epochs in {sas['seconds']}s, "
                     + ("**capped** by its time limit (not converged)" if sas["capped"]
                        else "early-stopped on validation NDCG@10") + ".\n")
    if r["perturbation"]:
        parts.append(f"\nPerturbation `{cfg.perturb}` (same noisy histories for every model):\n\n"
                     "| model | metric | clean | perturbed | drop |\n|---|---|---|---|---|\n" + "".join(
                         f"| {n} | {m} | {v['clean']:.4f} | {v['perturbed']:.4f} | {v['drop']:.4f} |\n"
                         for n, ms in r["perturbation"]["models"].items() for m, v in ms.items()))
    if r["reason_grounding"]:
        parts.append("\nReasons (top-1 item per user): " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["reason_grounding"].items()) + "\n")
    return "".join(parts)


def write_report(cfg: EvaluateConfig, report: dict, markdown: str, lines_name: str, lines: list[dict], log,
                 chart=None) -> dict:
    """The one way an evaluation leaves its results, each file written atomically into `cfg.output` (default
    <model>/eval-<split>): metrics.json (the report), metrics.md, the per-user lines and, when given,
    `chart(path)` drawing metrics.png. Returns the report with its `output` directory."""
    out = Path(cfg.output) if cfg.output else Path(cfg.model) / f"eval-{cfg.split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # an earlier run's: until this one's is written, none is there
    with atomic_file(out / "metrics.md") as fh:
        fh.write(markdown)
    write_jsonl(out / lines_name, lines)
    if chart is not None:
        chart(out / "metrics.png")
    # last: benchmarks (and people) take its presence as "this evaluation finished"
    write_json(out / "metrics.json", {k: v for k, v in report.items() if k not in ("markdown", "intervals_markdown",
                                                                                  "verdict")})
    if out.resolve() == (Path(cfg.model) / ModelCard.EVAL).resolve() and ModelCard.exists(cfg.model):
        ModelCard.load(cfg.model).write_readme()  # the model's README shows its latest test results
    log(f"report written to {out}/metrics.json, metrics.md" + (", metrics.png" if chart is not None else ""))
    return {**report, "output": str(out)}
