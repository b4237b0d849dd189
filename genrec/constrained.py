"""Trie-constrained beam search: every finished hypothesis is a catalog item, scored by sequence log-probability.

Why our own loop instead of `model.generate(num_beams=...)`: HF encodes each prompt once per beam; we encode it
once and repeat its KV cache across beams, and the model's generation_config (sampling, temperature, top-k/p)
can never leak into the search. Masking is one vectorised index_put per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .index import TokenTrie

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    item: int  # position in the ItemIndex
    score: float  # sum of token log-probabilities (the end token included)


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def trie_mask(trie: TokenTrie, nodes: list[int], vocab: int, banned_leaf: list[set[int]] | None,
              device) -> torch.Tensor:
    """Additive mask [rows, vocab]: 0 where the trie allows the token from that row's node, -inf elsewhere.

    `banned_leaf[r]` holds leaf nodes row r may not finish on (items to exclude for that row's user).
    A node of -1 marks a dead row: everything stays masked.
    """
    rows, cols = [], []
    for r, node in enumerate(nodes):
        if node < 0:
            continue
        allowed = trie.allowed(node)
        if banned_leaf is not None and banned_leaf[r]:
            children = trie.children[node]
            allowed = [t for t in allowed if children[t] not in banned_leaf[r]]
        rows.extend([r] * len(allowed))
        cols.extend(allowed)
    mask = torch.full((len(nodes), vocab), NEG_INF, device=device)
    if rows:
        mask[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = 0.0
    return mask


@torch.no_grad()
def beam_search(model, prompts: list[list[int]], trie: TokenTrie, k: int, beam_width: int, pad_id: int,
                banned: list[set[int]] | None = None, constrained: bool = True,
                max_new_tokens: int | None = None) -> list[list[Hypothesis]]:
    """Top-k items per prompt, best first. `banned[b]` are item positions never returned for prompt b.

    Only live beams are kept as rows (finished prompts and dead beams are dropped from the KV cache), so the
    cost per step follows the work left. With constrained=False the same search runs without the trie (for
    benchmarks): a beam finishes on an end token and its item is -1 unless the text happens to be an item.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    B, W = len(prompts), max(beam_width, k)
    leaf_of_item = {item: node for node, item in trie.leaf_item.items()}
    banned_leaf = [{leaf_of_item[i] for i in (banned[b] if banned else ()) if i in leaf_of_item} for b in range(B)]
    end_tokens = {t for n in range(len(trie.children)) for t, c in trie.children[n].items() if c in trie.leaf_item}
    max_len = max_new_tokens or trie.depth

    ids, attn = left_pad(prompts, pad_id, device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    vocab = logp.shape[-1]
    last_pos = pos[:, -1]

    # Live rows: parallel lists (owner prompt, trie node, score, tokens so far). One row per prompt at first.
    owner, nodes, scores, toks = list(range(B)), [0] * B, [0.0] * B, [[] for _ in range(B)]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_len):
        if constrained:
            logp = logp + trie_mask(trie, nodes, vocab, [banned_leaf[o] for o in owner], device)
        cand = torch.tensor(scores, device=device).view(-1, 1) + logp  # [R, V]
        rows_of: dict[int, list[int]] = {}
        for r, o in enumerate(owner):
            rows_of.setdefault(o, []).append(r)
        n_owner, n_node, n_score, n_tok, src, feed = [], [], [], [], [], []
        for b, rows in rows_of.items():
            flat = cand[rows].view(-1)
            # Take candidates best-first until W live beams: usually 2W suffice; when many finish or are
            # banned, look deeper, so the beam stays full while any valid continuation exists.
            n_finite = int(torch.isfinite(flat).sum())
            top_s, top_i = flat.topk(min(n_finite, 2 * W))
            if len(top_s) < n_finite and len(top_s) > 0:
                top_s, top_i = flat.topk(min(n_finite, 2 * W + len(finished[b]) + 4 * W))
            live = 0
            for score, fi in zip(top_s.tolist(), top_i.tolist()):
                if live == W:
                    break
                r, tok = rows[fi // vocab], fi % vocab
                if constrained:
                    node = trie.step(nodes[r], tok)
                    item = trie.leaf_item.get(node)
                else:
                    node, item = 0, None
                    if tok in end_tokens or tok == pad_id:
                        leaf = trie.walk(toks[r] + [tok])
                        item = trie.leaf_item.get(leaf, -1) if leaf is not None else -1
                if item is not None:
                    if len(finished[b]) < k or score > finished[b][-1].score:
                        finished[b].append(Hypothesis(item=item, score=score))
                        finished[b].sort(key=lambda h: -h.score)
                        del finished[b][k:]
                    continue
                n_owner.append(b), n_node.append(node), n_score.append(score), n_tok.append(toks[r] + [tok])
                src.append(r), feed.append(tok)
                live += 1
        # A prompt is done when it has k items and no live beam can beat the k-th (log-probs only fall).
        best_live: dict[int, float] = {}
        for b, sc in zip(n_owner, n_score):
            best_live[b] = max(best_live.get(b, NEG_INF), sc)
        for b in range(B):
            if b not in best_live or (len(finished[b]) >= k and finished[b][k - 1].score >= best_live[b]):
                done[b] = True
        keep = [j for j, b in enumerate(n_owner) if not done[b]]
        if not keep or step == max_len - 1:
            break
        owner = [n_owner[j] for j in keep]
        nodes, scores, toks = [n_node[j] for j in keep], [n_score[j] for j in keep], [n_tok[j] for j in keep]
        src_t = torch.tensor([src[j] for j in keep], device=device)
        cache.reorder_cache(src_t)  # index_select on the batch axis: also drops rows no longer needed
        attn = torch.cat([attn[src_t], torch.ones((len(keep), 1), dtype=attn.dtype, device=device)], dim=-1)
        last_pos = last_pos[src_t] + 1
        out = model(input_ids=torch.tensor([feed[j] for j in keep], device=device).view(-1, 1),
                    attention_mask=attn, position_ids=last_pos.view(-1, 1), past_key_values=cache, use_cache=True)
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    return finished


def top_items(model, prompts: list[list[int]], trie: TokenTrie, k: int, beam_width: int, pad_id: int,
              banned: list[set[int]] | None = None) -> list[list[Hypothesis]]:
    """Beam search that always returns min(k, valid items) results: a beam can commit to a subtree holding
    fewer than k allowed items; such prompts are searched again with twice the width."""
    n_items = len(trie.leaf_item)
    found = beam_search(model, prompts, trie, k, beam_width, pad_id, banned)
    width = max(beam_width, k)
    while True:
        short = [b for b, f in enumerate(found)
                 if len(f) < min(k, n_items - len(banned[b] if banned else ()))]
        if not short or width >= n_items:
            return found
        width = min(2 * width, n_items)
        again = beam_search(model, [prompts[b] for b in short], trie, k, width, pad_id,
                            [banned[b] for b in short] if banned else None)
        for b, f in zip(short, again):
            found[b] = f
