"""Constrained top-K generation vs unconstrained beam search (same loop, trie off), on a genrec model.

Reports users/s for histories of --history items (with the prompt KV shared across beams, the default on CPU,
and with the whole KV cache reordered every step, as before), and how often the
beam search finds the exact top-K: each user's certified exact top-K (search="exact", which equals scoring every
item by teacher forcing; tests/test_constrained.py checks that) against the beam's at widths --widths, with the
cost of each.

    python -m benchmarks.bench_generate [--model runs/sample/model] [--users 32] [--k 10] [--history 10]
"""

from __future__ import annotations

import time

from benchmarks.common import machine, parser, write_results


class WholeVocabulary:
    """The unconstrained search space for the comparison: the same beam search over every token of the
    vocabulary. A beam finishes on an item's end token, EOS or pad; its item is -1 unless the text it wrote happens
    to be a catalog item."""

    def __init__(self, trie, backend):
        self.trie, self.depth = trie, trie.depth
        self.stops = trie.end_tokens | {getattr(backend, "pad_id", -1), getattr(backend, "eos_id", -1)}

    def dead_nodes(self, banned: set[int]) -> set[int]:
        return set()  # nothing is excluded from free text

    def allowed_rows(self, nodes, dead):
        return None  # every token

    def expand(self, node, allowed, col, written):
        if col not in self.stops:
            return col, 0, None
        leaf = self.trie.walk(written + [col])
        return col, 0, self.trie.leaf_item.get(leaf, -1) if leaf is not None else -1


def main() -> None:
    ap = parser(__doc__, model="runs/sample/model", users=32, k=10, history=10, batch_size=8)
    ap.add_argument("--widths", default="10,20,40", help="beam widths compared with the exact top-K ('': skip the "
                    "exact comparison, which can widen up to the catalog size)")
    args = ap.parse_args()

    from genrec.constrained import beam_search, top_items
    from genrec.data import load_prepared
    from genrec.recommender import Recommender

    rec = Recommender(args.model)
    rec.prompt_cfg.max_history = args.history
    rec.prompt_cfg.max_prompt_tokens = 4096
    data = load_prepared(rec.card.data)
    rows = [r for r in data.split("test") if len(r["history"]) >= args.history][:args.users]
    prompts = [rec.builder.encode(r["history"][-args.history:]) for r in rows]
    banned = [{rec.index.position[i] for i in r["history"] if i in rec.index.position} for r in rows]
    out = {}
    modes = ["constrained", "unconstrained"] + (["constrained, KV cache reordered"] if rec.backend.shared_prompt else [])
    for mode in modes:
        # "KV cache reordered": the previous HF path (every live row's whole cache copied per step), side by side
        rec.backend.shared_prompt = mode != "constrained, KV cache reordered"
        t0 = time.perf_counter()
        n_items = 0
        for s in range(0, len(prompts), args.batch_size):
            space = WholeVocabulary(rec.trie, rec.backend) if mode == "unconstrained" else rec.trie
            found = beam_search(rec.backend, prompts[s:s + args.batch_size], space, args.k, args.k,
                                banned[s:s + args.batch_size], max_new_tokens=rec.trie.depth)
            n_items += sum(1 for f in found for h in f if h.item >= 0)
        dt = time.perf_counter() - t0
        out[mode] = {"seconds": dt, "users_per_second": len(prompts) / dt, "valid_items_returned": n_items}
    rec.backend.shared_prompt = "constrained, KV cache reordered" in out
    ratio = out["constrained"]["users_per_second"] / out["unconstrained"]["users_per_second"]

    def run(search: str, width: int) -> tuple[list[list[int]], float, int]:
        t0, lists, rounds = time.perf_counter(), [], 0
        for s in range(0, len(prompts), args.batch_size):
            stats: dict = {}
            found = top_items(rec.backend, prompts[s:s + args.batch_size], rec.trie, args.k, width,
                              banned[s:s + args.batch_size], search=search, stats=stats)
            lists += [[h.item for h in f] for f in found]
            rounds = max(rounds, stats["max_width"])
        return lists, time.perf_counter() - t0, rounds

    search = {}
    widths = [int(x) for x in args.widths.split(",") if x]
    if widths:
        exact, exact_s, exact_width = run("exact", args.k)
        search["exact"] = {"seconds": exact_s, "users_per_second": len(prompts) / exact_s, "recall_of_exact": 1.0,
                           "widest_beam": exact_width}
    for w in widths:
        lists, secs, _ = run("beam", w)
        recall = sum(len(set(a) & set(e)) for a, e in zip(lists, exact)) / sum(len(e) for e in exact)
        search[f"beam {w}"] = {"seconds": secs, "users_per_second": len(prompts) / secs, "recall_of_exact": recall,
                               "widest_beam": w}
    if "constrained, KV cache reordered" in out:
        out["shared prompt KV speed-up"] = {"users_per_second": out["constrained"]["users_per_second"] /
                                            out["constrained, KV cache reordered"]["users_per_second"]}
    res = {"users": len(prompts), "k": args.k, "beam_width": args.k, "history": args.history,
           "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts), "results": out,
           "constrained_over_unconstrained": ratio, "search": search, "machine": machine()}
    write_results("bench_generate", res, [{"mode": m, **{k: v for k, v in r.items()}} for m, r in out.items()] +
                  [{"mode": "ratio", "seconds": 0.0, "users_per_second": ratio, "valid_items_returned": 0}] +
                  [{"mode": f"top-{args.k} by {m}", "seconds": r["seconds"], "users_per_second": r["users_per_second"],
                    "recall_of_exact": r["recall_of_exact"], "widest_beam": r["widest_beam"]}
                   for m, r in search.items()])


if __name__ == "__main__":
    main()
