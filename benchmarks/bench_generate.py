"""Constrained top-K generation vs unconstrained beam search (same loop, trie off), on a genrec model.

Reports users/s for histories of --history items (with the prompt KV shared across beams, the default on CPU,
and with the whole KV cache reordered every step, as before), and how often the
beam search finds the exact top-K: each user's certified exact top-K (search="exact", which equals scoring every
item by teacher forcing; tests/test_constrained.py checks that) against the beam's at widths --widths, with the
cost of each. Beside users/s, every mode reports the beam tokens it decoded and the decoding seconds per token
(its time less the prompts' prefill, timed alone): users/s follows how many tokens a search writes, per-token cost
what the constraint itself adds. `--profile`: where the seconds of one constrained pass go (prefill, decoding
steps, the allowed-token gather, the trie, the rest of the search loop), from cProfile. "constrained, batches by
length" batches users of similar prompt length together (what evaluate and generate do), the other modes take them
in data order.

    python -m benchmarks.bench_generate [--model runs/sample/model] [--users 32] [--k 10] [--history 10]
"""

from __future__ import annotations

import dataclasses
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


class CountingBackend:
    """A backend that counts the beam tokens decoded (rows of every `advance`): what a search made the model do."""

    def __init__(self, backend):
        self.backend, self.tokens = backend, 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def start(self, prompts, allowed):
        beams = self.backend.start(prompts, allowed)
        advance = beams.advance

        def counted(src, tokens, allowed_rows):
            self.tokens += len(tokens)
            return advance(src, tokens, allowed_rows)

        beams.advance = counted
        return beams


def where_the_seconds_go(fn) -> dict:
    """Seconds of `fn()` by part, from cProfile's cumulative times: the prompts' prefill, the decoding steps (model
    forward of the beams), gathering the allowed tokens' log-probabilities, the trie (allowed tokens, expansion,
    dead subtrees), and the rest of the search loop (top-k selection, bookkeeping)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    cum: dict[str, float] = {}
    gather_in_steps = 0.0
    for (path, _, name), (_, _, _, ct, callers) in pstats.Stats(prof).stats.items():
        if "genrec" in path:
            cum[name] = max(cum.get(name, 0.0), ct)
            if name == "gather_allowed":
                gather_in_steps = sum(c[3] for (_, _, caller), c in callers.items() if caller == "advance")
    total, prefill, gather = cum.get("beam_search", 0.0), cum.get("_prefill", 0.0), cum.get("gather_allowed", 0.0)
    steps = cum.get("advance", 0.0) - gather_in_steps
    trie = sum(cum.get(n, 0.0) for n in ("allowed_rows", "expand", "dead_nodes", "subtree_min"))
    rest = total - prefill - steps - gather - trie
    parts = {"total": total, "prefill (model)": prefill, "decoding steps (model)": steps,
             "gather of allowed log-probs": gather, "trie": trie, "rest of the search loop": rest}
    out = {k: round(v, 3) for k, v in parts.items()}
    out["share_outside_the_model"] = round((gather + trie + rest) / total, 3) if total else None
    return out


def main() -> None:
    ap = parser(__doc__, model="runs/sample/model", users=32, k=10, history=10, batch_size=8)
    ap.add_argument("--profile", action="store_true", help="also profile one constrained pass (where the seconds go)")
    ap.add_argument("--widths", default="10,20,40", help="beam widths compared with the exact top-K ('': skip the "
                    "exact comparison, which can widen up to the catalog size)")
    args = ap.parse_args()

    from genrec.infer.constrained import beam_search, top_items
    from genrec.data.prepared import load_prepared
    from genrec.infer.recommender import Recommender
    from genrec.prompts.sequence import make_builder

    rec = Recommender(args.model)
    # this benchmark's own prompt budget, in a builder of its own (the Recommender's stays as the model was trained)
    builder = make_builder(rec.tok, dataclasses.replace(rec.prompt_cfg, max_history=args.history,
                                                        max_prompt_tokens=4096), rec.catalog, rec.index,
                           rec.builder.template)
    data = load_prepared(rec.card.data)
    rows = [r for r in data.split("test") if len(r["history"]) >= args.history][:args.users]
    prompts = [builder.encode(r["history"][-args.history:]) for r in rows]
    banned = [{rec.index.position[i] for i in r["history"] if i in rec.index.position} for r in rows]
    out = {}
    modes = ["constrained", "constrained, batches by length", "unconstrained"] + (
        ["constrained, KV cache reordered"] if rec.backend.shared_prompt else [])
    by_length = sorted(range(len(prompts)), key=lambda n: -len(prompts[n]))

    def batches(mode: str) -> list[list[int]]:
        order = by_length if mode == "constrained, batches by length" else list(range(len(prompts)))
        return [order[s:s + args.batch_size] for s in range(0, len(prompts), args.batch_size)]

    def one_pass(mode: str, backend=rec.backend, first_batch_only: bool = False) -> int:
        n_items = 0
        for idx in batches(mode)[:1] if first_batch_only else batches(mode):
            space = WholeVocabulary(rec.trie, rec.backend) if mode == "unconstrained" else rec.trie
            found = beam_search(backend, [prompts[n] for n in idx], space, args.k, args.k,
                                [banned[n] for n in idx], max_new_tokens=rec.trie.depth)
            n_items += sum(1 for f in found for h in f if h.item >= 0)
        return n_items

    def prefill_seconds(mode: str) -> float:
        """The prompts' prefill alone (the first forward of each batch, whole vocabulary): the same for every mode
        that batches users alike, and not part of a search's per-token cost."""
        t0 = time.perf_counter()
        for idx in batches(mode):
            rec.backend.start([prompts[n] for n in idx], None)
        return time.perf_counter() - t0

    for mode in ("constrained", "unconstrained"):  # warm-up: the first search pays one-off costs (allocations)
        one_pass(mode, first_batch_only=True)
    for mode in modes:
        # "KV cache reordered": the previous HF path (every live row's whole cache copied per step), side by side
        rec.backend.shared_prompt = mode != "constrained, KV cache reordered"
        counting = CountingBackend(rec.backend)
        t0 = time.perf_counter()
        n_items = one_pass(mode, counting)
        dt = time.perf_counter() - t0
        decoding = max(dt - prefill_seconds(mode), 1e-9)
        out[mode] = {"seconds": dt, "users_per_second": len(prompts) / dt, "valid_items_returned": n_items,
                     "beam_tokens": counting.tokens, "beam_tokens_per_user": counting.tokens / len(prompts),
                     "decoding_ms_per_token": 1000 * decoding / max(counting.tokens, 1)}
    rec.backend.shared_prompt = "constrained, KV cache reordered" in out
    ratio = out["constrained"]["users_per_second"] / out["unconstrained"]["users_per_second"]
    # per decoded token: the constraint's own cost, apart from how many tokens each search writes
    token_ratio = out["unconstrained"]["decoding_ms_per_token"] / out["constrained"]["decoding_ms_per_token"]

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
    profile = where_the_seconds_go(lambda: one_pass("constrained")) if args.profile else None
    res = {"profile": profile, "users": len(prompts), "k": args.k, "beam_width": args.k, "history": args.history,
           "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts), "results": out,
           "constrained_over_unconstrained": ratio, "constrained_over_unconstrained_per_token": token_ratio,
           "search": search, "machine": machine()}
    write_results("bench_generate", res, [{"mode": m, **{k: v for k, v in r.items()}} for m, r in out.items()] +
                  [{"mode": "constrained / unconstrained, users/s", "ratio": ratio},
                   {"mode": "constrained / unconstrained, per decoded token", "ratio": token_ratio}] +
                  [{"mode": f"top-{args.k} by {m}", "seconds": r["seconds"], "users_per_second": r["users_per_second"],
                    "recall_of_exact": r["recall_of_exact"], "widest_beam": r["widest_beam"]}
                   for m, r in search.items()])


if __name__ == "__main__":
    main()
