"""Trie-constrained beam search: every finished hypothesis is a catalog item, scored by sequence log-probability.

What it guarantees: every item returned is a valid catalog item, the K items are distinct, each is scored by its
sequence log-probability (the end token included), and per-user exclusions hold. It is a beam search, not an exact
search: an item whose prefix falls below the W-th live beam is lost for good, so the K returned are the best the
beam found, not necessarily the K most probable items (a wider `beam_width` finds more of them).

Why our own loop instead of `model.generate(num_beams=...)` or vLLM's beam search: we need the top-K *items*
(distinct trie leaves) with per-user exclusions, on either engine. The loop
asks a backend (backends.py) only for the raw log-probabilities of the tokens the trie allows from each live
beam, so the model's generation_config (sampling, temperature, top-k/p) can never leak into the search, and the
HF and vLLM backends return the same items with the same scores.

`search="exact"` (top_items) adds a certificate: the search records, per prompt, the best score of anything it
pruned (a candidate beyond the W live beams). Log-probabilities only fall along a path (and the penalty bound only
grows), so no item below a pruned prefix can score above that prefix; once the K-th item found scores at least the
best pruned prefix, the K items are the exact top-K. A prompt without the certificate is searched again at twice
the width, up to the catalog size, where nothing is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genrec.config import SEARCHES
from genrec.errors import GenrecError


class TokenTrie:
    """Prefix tree over token sequences; a leaf (reached through the end token) names one item."""

    def __init__(self, sequences: list[list[int]]):
        self.children: list[dict[int, int]] = [{}]
        self.parent: list[int] = [-1]
        self.leaf_item: dict[int, int] = {}
        for item, seq in enumerate(sequences):
            node = 0
            for tok in seq:
                nxt = self.children[node].get(tok)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][tok] = nxt
                    self.children.append({})
                    self.parent.append(node)
                node = nxt
            if node in self.leaf_item:
                raise GenrecError(f"items {self.leaf_item[node]} and {item} have the same token sequence")
            self.leaf_item[node] = item
        self.depth = max((len(s) for s in sequences), default=0)
        self._allowed: dict[int, list[int]] = {}
        self._levels: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (nodes, their parents) per depth
        self._leaves: tuple[torch.Tensor, torch.Tensor] | None = None  # (leaf nodes, their items)

        self.leaf_of_item = {item: node for node, item in self.leaf_item.items()}
        self.end_tokens = {t for kids in self.children for t, c in kids.items() if c in self.leaf_item}

    def allowed(self, node: int, dead: set[int] | frozenset = frozenset()) -> list[int]:
        """Tokens that continue `node` towards at least one item whose leaf is not in `dead`."""
        if dead:
            return [t for t, c in self.children[node].items() if c not in dead]
        out = self._allowed.get(node)
        if out is None:
            out = self._allowed[node] = list(self.children[node])
        return out

    def dead_nodes(self, banned_items: set[int]) -> set[int]:
        """Nodes under which every item is banned (their leaves included). A beam never enters one, so it can
        never spend its width on a subtree holding only excluded (e.g. already seen) items."""
        dead = {self.leaf_of_item[i] for i in banned_items if i in self.leaf_of_item}
        frontier = list(dead)
        live_kids: dict[int, int] = {}  # per parent reached: children not (yet) dead. Counting, not rescanning
        while frontier:  # the siblings, keeps this linear: a wide node (a depth-one trie) was quadratic
            p = self.parent[frontier.pop()]
            if p < 0:
                continue
            left = live_kids.get(p, len(self.children[p])) - 1
            live_kids[p] = left
            if left == 0:
                dead.add(p)
                frontier.append(p)
        return dead

    def subtree_min(self, item_values: torch.Tensor) -> torch.Tensor:
        """[..., nodes]: per node, the smallest value of any item below it (a leaf: its item's value), for one row
        of item values ([items]) or one per prompt ([prompts, items]); one scatter per trie depth."""
        if self._levels is None:
            depth = [0] * len(self.children)
            for node in range(1, len(self.children)):  # children always have larger ids than parents
                depth[node] = depth[self.parent[node]] + 1
            by_depth: dict[int, list[int]] = {}
            for node in range(1, len(self.children)):
                by_depth.setdefault(depth[node], []).append(node)
            self._levels = [(torch.tensor(nodes), torch.tensor([self.parent[n] for n in nodes]))
                            for _, nodes in sorted(by_depth.items(), reverse=True)]
            self._leaves = (torch.tensor(list(self.leaf_item)), torch.tensor(list(self.leaf_item.values())))
        out = item_values.new_full(item_values.shape[:-1] + (len(self.children),), float("inf"))
        out[..., self._leaves[0]] = item_values[..., self._leaves[1]]
        for nodes, parents in self._levels:  # deepest first: a node's value is final before its parent reads it
            out.scatter_reduce_(-1, parents.expand(out.shape[:-1] + parents.shape), out[..., nodes], "amin")
        return out

    def allowed_rows(self, nodes: list[int], dead: list[set[int]]) -> list[list[int]]:
        """The allowed tokens of each live row (at `nodes`, with its prompt's dead nodes): the columns of its
        log-probabilities the engine returns."""
        return [self.allowed(n, d) for n, d in zip(nodes, dead)]

    def expand(self, node: int, allowed: list[int], col: int, written: list[int]) -> tuple[int, int, int | None]:
        """Column `col` of a row at `node`: the token, the node it reaches, and the item it finishes (None: not
        finished). `written` (the row's tokens so far) is for search spaces that are not a trie."""
        tok = allowed[col]
        child = self.children[node][tok]
        return tok, child, self.leaf_item.get(child)

    def walk(self, tokens: list[int]) -> int | None:
        node = 0
        for t in tokens:
            node = self.children[node].get(t)
            if node is None:
                return None
        return node



NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    item: int  # position in the ItemIndex (-1: unconstrained text that is no item)
    score: float  # sum of token log-probabilities (the end token included)


@dataclass
class LiveBeams:
    """A search step's live beams as parallel lists: the prompt each serves, its trie node, its score, its tokens
    so far, and the row of the step before it grew from."""

    owner: list[int]
    node: list[int]
    score: list[float]
    tok: list[list[int]]
    src: list[int] = field(default_factory=list)

    def add(self, owner: int, node: int, score: float, tok: list[int], src: int) -> None:
        self.owner.append(owner), self.node.append(node), self.score.append(score), self.tok.append(tok)
        self.src.append(src)

    def subset(self, keep: list[int]) -> LiveBeams:
        return LiveBeams([self.owner[j] for j in keep], [self.node[j] for j in keep], [self.score[j] for j in keep],
                         [self.tok[j] for j in keep])

    @classmethod
    def starting(cls, owners: list[int]) -> LiveBeams:
        return cls(list(owners), [0] * len(owners), [0.0] * len(owners), [[] for _ in owners])


@torch.no_grad()
def beam_search(backend, prompts: list[list[int]], trie: TokenTrie, k: int, beam_width: int,
                banned: list[set[int]] | None = None,
                max_new_tokens: int | None = None, item_penalty=None,
                pruned: list[float] | None = None) -> list[list[Hypothesis]]:
    """Top-k items per prompt, best first. `banned[b]` are item positions never returned for prompt b.
    `pruned`, when given, is filled with each prompt's best pruned score (-inf: nothing was pruned).

    `item_penalty[i]` (>= 0, e.g. a popularity penalty) is subtracted from item i's log-probability; one row of
    them ([items]) for every prompt, or one row per prompt ([prompts, items]: a request's words matched to item
    texts), so prompts with different penalties are still searched in one batch. A beam is ranked from its first
    token by its log-probability minus the smallest penalty of any item below it, so beams do not spend the width
    on prefixes of penalised items only; that bound only grows along a path, which keeps the early stop ("scores
    only fall") exact.

    Only live beams are kept as rows (finished prompts and dead beams are dropped), so the cost per step follows
    the work left; beams never enter subtrees whose items are all banned. The search space is the trie's: its
    `allowed_rows` and `expand` (a benchmark swaps in the whole vocabulary through the same two methods).
    """
    B, W = len(prompts), max(beam_width, k)
    dead = [trie.dead_nodes(banned[b]) if banned and banned[b] else set() for b in range(B)]
    bound = penalty_bound(trie, item_penalty, B)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    best_pruned = [NEG_INF] * B
    if pruned is not None:
        pruned[:] = best_pruned
    live = LiveBeams.starting([b for b in range(B) if 0 not in dead[b]])  # node 0 dead: every item is banned
    if not live.owner:
        return finished
    allowed = trie.allowed_rows(live.node, [dead[o] for o in live.owner])
    beams = backend.start([prompts[b] for b in live.owner], allowed)
    logp = beams.logp
    if bound is not None:
        live.score = (-bound[live.owner, 0]).tolist()
    max_len = max_new_tokens or trie.depth
    for step in range(max_len):
        cand = logp.new_tensor(live.score).view(-1, 1) + logp  # [R, A]
        if bound is not None:
            cand = cand - step_penalty(trie, bound, live.owner, live.node, allowed, cand)
        grown = LiveBeams([], [], [], [])
        rows_of: dict[int, list[int]] = {}
        for r, o in enumerate(live.owner):
            rows_of.setdefault(o, []).append(r)
        for b, rows in rows_of.items():
            best_pruned[b] = max(best_pruned[b], extend(trie, cand, rows, live, allowed, W, k, finished[b], grown, b))
        keep = unfinished(grown, finished, k)
        if not keep or step == max_len - 1:
            break
        live = grown.subset(keep)
        allowed = trie.allowed_rows(live.node, [dead[o] for o in live.owner])
        logp = beams.advance([grown.src[j] for j in keep], [grown.tok[j][-1] for j in keep], allowed)
    if pruned is not None:
        pruned[:] = best_pruned
    return finished


def penalty_bound(trie: TokenTrie, item_penalty, prompts: int) -> torch.Tensor | None:
    """[prompts, nodes] (float64): per prompt and trie node, the smallest penalty of any item below it; None
    without a penalty. A shared row is bounded once and viewed per prompt."""
    if item_penalty is None:
        return None
    pen = torch.as_tensor(item_penalty, dtype=torch.float64)
    if pen.dim() == 2 and pen.shape[0] != prompts:
        raise GenrecError(f"item_penalty has {pen.shape[0]} rows for {prompts} prompts")
    bound = trie.subtree_min(pen)
    return bound if bound.dim() == 2 else bound.expand(prompts, -1)


def step_penalty(trie: TokenTrie, bound: torch.Tensor, owners: list[int], nodes: list[int],
                 allowed: list[list[int]], like: torch.Tensor) -> torch.Tensor:
    """[R, A]: bound(child) - bound(node) for each allowed token of each row, from its prompt's row of `bound`
    (>= 0; padded columns 0)."""
    width = like.shape[1]
    kids = torch.tensor([[trie.children[n][t] for t in toks] + [n] * (width - len(toks))
                         for n, toks in zip(nodes, allowed)]).view(len(nodes), width)
    own = torch.tensor(owners)
    out = bound[own.view(-1, 1), kids] - bound[own, torch.tensor(nodes)].view(-1, 1)
    return out.to(like.dtype).to(like.device)


def extend(trie: TokenTrie, cand: torch.Tensor, rows: list[int], live: LiveBeams, allowed, W: int, k: int,
           finished: list[Hypothesis], grown: LiveBeams, b: int) -> float:
    """Prompt b's step: its candidates (`cand[rows]`) taken best-first until W live beams (into `grown`), an item
    reached going to `finished` (its top k, best first). Returns the best candidate left out (-inf: none), which
    bounds every item below it."""
    width = cand.shape[1]
    flat = cand[rows].view(-1)
    # Take candidates best-first until W live beams; look deeper when many of them finish.
    n_finite = int(torch.isfinite(flat).sum())
    top_s, top_i = flat.topk(min(n_finite, 2 * W))
    if 0 < len(top_s) < n_finite:
        top_s, top_i = flat.topk(min(n_finite, 2 * W + len(finished) + 4 * W))
    n_live = consumed = 0
    for score, fi in zip(top_s.tolist(), top_i.tolist()):
        if n_live == W:
            break
        consumed += 1
        r, col = rows[fi // width], fi % width
        tok, node, item = trie.expand(live.node[r], allowed[r] if allowed is not None else None, col, live.tok[r])
        if item is not None:
            if len(finished) < k or score > finished[-1].score:
                finished.append(Hypothesis(item=item, score=score))
                finished.sort(key=lambda h: -h.score)
                del finished[k:]
            continue
        grown.add(b, node, score, live.tok[r] + [tok], r)
        n_live += 1
    if consumed >= n_finite:
        return NEG_INF
    return float(top_s[consumed]) if consumed < len(top_s) else float(flat.topk(consumed + 1).values[-1])


def unfinished(grown: LiveBeams, finished: list[list[Hypothesis]], k: int) -> list[int]:
    """The rows of `grown` whose prompt goes on: a prompt is done when it has k items and no live beam can beat
    the k-th (log-probabilities only fall), or when it has no live beam left."""
    best_live: dict[int, float] = {}
    for b, sc in zip(grown.owner, grown.score):
        best_live[b] = max(best_live.get(b, NEG_INF), sc)
    done = {b for b in best_live if len(finished[b]) >= k and finished[b][k - 1].score >= best_live[b]}
    return [j for j, b in enumerate(grown.owner) if b not in done]




def top_items(backend, prompts: list[list[int]], trie: TokenTrie, k: int, beam_width: int,
              banned: list[set[int]] | None = None, item_penalty=None,
              search: str = "beam", stats: dict | None = None, max_width: int | None = None) -> list[list[Hypothesis]]:
    """Beam search that always returns min(k, allowed items) results: should a search still end short, that
    prompt is searched again with twice the width (a safety net; dead-subtree pruning makes it rare).
    search="exact": also searched again, at twice the width, is every prompt whose top-k lacks the certificate
    (see the module docstring), so the result is the exact top-k. `max_width` caps that widening (None: up to the
    catalog size, where nothing is pruned): a prompt still without its certificate at the cap keeps the cap's
    beam result and is listed in `stats["uncertified"]`. `stats` also gets the searches run and the widest."""
    if search not in SEARCHES:
        raise GenrecError(f"unknown search {search!r} ({', '.join(SEARCHES)})")
    n_items = len(trie.leaf_item)
    cap = min(max_width or n_items, n_items)
    pruned: list[float] = []
    found = beam_search(backend, prompts, trie, k, beam_width, banned, item_penalty=item_penalty, pruned=pruned)
    width, rounds = max(beam_width, k), 1
    while True:
        short = {b for b, f in enumerate(found) if len(f) < min(k, n_items - len(banned[b] if banned else ()))}
        uncertified = [b for b, f in enumerate(found)
                       if search == "exact" and len(f) >= k and pruned[b] > f[k - 1].score]
        todo = sorted(short | (set(uncertified) if width < cap else set()))
        if not todo or width >= n_items:
            if stats is not None:
                stats.update(searches=rounds, max_width=width, uncertified=uncertified)
            return found
        width = min(2 * width, n_items if short else max(cap, width))
        rounds += 1
        again_pruned: list[float] = []
        again = beam_search(backend, [prompts[b] for b in todo], trie, k, width,
                            [banned[b] for b in todo] if banned else None, item_penalty=rows_of(item_penalty, todo),
                            pruned=again_pruned)
        for b, f, p in zip(todo, again, again_pruned):
            found[b], pruned[b] = f, p


def rows_of(item_penalty, prompts: list[int]):
    """The penalty of a subset of prompts: a shared row as it is, per-prompt rows those prompts' rows."""
    if item_penalty is None:
        return None
    pen = torch.as_tensor(item_penalty)
    return pen[prompts] if pen.dim() == 2 else item_penalty
