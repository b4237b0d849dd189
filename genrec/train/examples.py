"""What `genrec sft` trains on: the item identifiers (`build_index`), one prompt builder per task
(`task_builders`), and every task's tokenized examples in one seeded shuffle (`training_examples`): sequence
windows, prefix rows, rerank lists from the retriever, alignment questions; then their token-budget batches.

We tokenize examples ourselves (prompt ids + completion ids + completion mask) so that training sees exactly the
token sequences that constrained decoding later allows; TRL then masks the prompt out of the loss.
"""

from __future__ import annotations

import dataclasses
import random

from genrec.config import OBJECTIVES, SFTConfig
from genrec.data.prepared import PreparedData
from genrec.errors import GenrecError
from genrec.infer.retriever import Retriever
from genrec.items.index import ItemIndex
from genrec.prompts.builder import PromptBuilder
from genrec.prompts.sequence import OBJECTIVE, make_builder


def build_index(data: PreparedData, cfg: SFTConfig, log=print) -> ItemIndex:
    """The item identifiers the model will write; semantic ids learn from the training part of sequences only."""
    histories = [data.train_items(u) for u in data.users.values()]
    has_text = data.manifest.get("columns", {}).get("title") is not None
    index = ItemIndex.build(list(data.catalog.values()), cfg.item_id, histories, has_text, cfg.seed,
                            cfg.semantic_levels, cfg.semantic_codebook, cfg.semantic_text_weight)
    summary = index.rules.summary(len(index.item_ids), index.stats)
    if summary:
        log(summary)
    return index


def task_builders(tok, cfg: SFTConfig, catalog: dict[str, dict], index: ItemIndex) -> dict[str, PromptBuilder]:
    """One prompt builder per task of the run, the first being the main one (it alone takes prompt.template)."""
    tasks = cfg.tasks or [cfg.prompt.task]
    if len(set(tasks)) != len(tasks):
        raise GenrecError(f"a task is named twice in {','.join(tasks)}")
    if cfg.objective not in OBJECTIVES:  # checked here too: tasks other than next_item never pass it on
        raise GenrecError(f"unknown objective {cfg.objective!r} ({', '.join(OBJECTIVES)})")
    # the sequence objective is next_item's; every task that asks a question after the history stays prefix
    return {t: make_builder(tok, dataclasses.replace(
        cfg.prompt, task=t, template=cfg.prompt.template if n == 0 else None,
        objective=cfg.objective if OBJECTIVE[cfg.objective].only_task in (None, t) else "prefix"), catalog, index)
        for n, t in enumerate(tasks)}


def training_examples(cfg: SFTConfig, data: PreparedData, builders: dict[str, PromptBuilder],
                      retriever: Retriever | None, processes: int = 1, log=print) -> tuple[list[dict], int]:
    """Every task's tokenized examples in one seeded shuffle: all sequence windows (they are few), then an equal
    share per other task (rerank lists from the retriever, prefix rows otherwise), plus alignment examples; and
    how many rows could not be rendered within the prompt budget (skipped)."""
    builder = next(iter(builders.values()))  # the main task
    index = builder.index
    train_rows = data.split("train")
    if len(train_rows) == 0:
        raise GenrecError(f"the training split of {cfg.data} is empty")
    needed = cfg.max_steps * cfg.batch_size * cfg.grad_accum * processes if cfg.max_steps > 0 else None
    limit = min(x for x in (needed, cfg.max_train_examples, len(train_rows) * len(builders)) if x is not None)
    examples, skipped = [], {}
    seq = [t for t, b in builders.items() if b.per_window]
    if seq:  # the sequence objective: all windows (they are few); other tasks get as many examples each
        examples = sequence_examples(builders[seq[0]], data, cfg.seed)[:cfg.max_train_examples]
        skipped[seq[0]] = 0
        limit = len(examples) * len(builders)
    for n, (task, b) in enumerate(builders.items()):  # an equal share of the examples per task
        if task in seq:
            continue
        if b.task.ranks_candidates:
            ex, skipped[task], missed = rerank_examples(b, data, retriever, -(-limit // len(builders)),
                                                        cfg.seed + n, cfg.rerank_copies)
            n_valid = len(data.split("valid"))
            log(f"rerank: {n_valid - missed} of {n_valid} users' validation item is in the retriever's top "
                f"{b.cfg.rerank_candidates} (their lists are that top K; the others': the K ranked around it); "
                f"{len(ex)} examples")
        else:
            ex, skipped[task] = build_examples(b, train_rows, -(-limit // len(builders)), cfg.seed + n, data.users)
        if not ex:
            raise GenrecError(f"no {task} training example could be rendered (check the template, the data and "
                              "max_prompt_tokens)")
        examples += ex
    if cfg.align_examples > 0 and not index.rules.writes_words:
        examples += alignment_examples(builder, data.catalog, int(cfg.align_examples * len(examples)), cfg.seed)
    random.Random(cfg.seed).shuffle(examples)
    for task, n in skipped.items():
        if n:
            log(f"skipped {n} {task} example(s) that could not be rendered within the prompt budget")
    return examples, sum(skipped.values())


def sequence_examples(builder, data: PreparedData, seed: int) -> list[dict]:
    """Every user's training part (the sequence less its valid and test items) as windows, in a seeded order."""
    from tqdm.auto import tqdm

    out, rng = [], random.Random(seed)  # the requests of prompt.request_share, seeded
    for u in tqdm(list(data.users.values()), desc="tokenizing sequences", unit="user", mininterval=1.0):
        train_items = data.train_items(u)
        n = len(train_items)
        out += builder.sequence_examples(train_items, u["timestamps"][:n],
                                         u["ratings"][:n] if u.get("ratings") else None, rng)
    random.Random(seed).shuffle(out)
    return out


def build_examples(builder: PromptBuilder, rows, limit: int | None, seed: int,
                   users: dict[str, dict] | None = None) -> tuple[list[dict], int]:
    """Tokenized examples (the task's `examples`) from rows in a seeded random order; rows that cannot be rendered
    are skipped and counted. A task whose rows give several examples each (preference) reads fewer rows."""
    from tqdm.auto import tqdm

    order = list(range(len(rows)))
    rng = random.Random(seed)
    rng.shuffle(order)
    if limit is not None:
        order = order[:limit // builder.task.examples_per_row]
    out, skipped = [], 0
    for i in tqdm(order, desc=f"tokenizing {builder.cfg.task} examples", unit="ex", mininterval=1.0):
        try:
            pairs = builder.task.examples(rows[i], rng, users)
        except GenrecError:
            skipped += 1
            continue
        out += [{"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)} for p, c in pairs]
    return out, skipped


def rerank_examples(builder: PromptBuilder, data: PreparedData, retriever: Retriever, limit: int, seed: int,
                    copies: int) -> tuple[list[dict], int, int]:
    """Rerank examples from each user's *validation* item: the history is the training part, the candidates K
    consecutive items of the retriever's ranking for it (`Rerank.training_candidates`: its top K, as inference
    shows them, when they hold the target, else the K ranked around the target). The retriever was trained on the
    training part only, so it never learnt these targets (its lists for training targets would rank them
    unrealistically high); each row gives `copies` examples, each with its own candidate order. Returns (examples,
    rows that could not be rendered, rows whose target is outside the retriever's top K)."""
    import numpy as np

    rows = list(data.split("valid"))
    k = builder.cfg.rerank_candidates
    hists = [list(r["history"]) for r in rows]
    windows, missed = [], 0
    column = {item: j for j, item in enumerate(retriever.items)}  # score column j is retriever.items[j]
    for s in range(0, len(rows), 512):  # [users, items] scores a chunk at a time
        part = rows[s:s + 512]
        scores = retriever.scores(hists[s:s + 512], [set(h) - {r["target"]} for h, r in zip(hists[s:s + 512], part)])
        for row, sc in zip(part, scores):
            order = np.lexsort((np.arange(len(sc)), -sc))  # best first, ties in catalog order
            order = order[np.isfinite(sc[order])]
            t = column.get(row["target"])
            r = int(np.flatnonzero(order == t)[0]) if t is not None and np.isfinite(sc[t]) else None
            missed += r is None or r >= k
            lo = 0 if r is None else builder.task.window_start(r, len(order), k)
            windows.append([retriever.items[j] for j in order[lo:lo + k]])
    rng = random.Random(seed)
    out, skipped = [], 0
    for _ in range(copies):
        for row, ranking in zip(rows, windows):
            if len(out) >= limit:
                return out, skipped, missed
            cands = builder.task.training_candidates(ranking, row["target"], k, rng)
            if cands is None:
                continue
            try:
                prompt, answer = builder.task.example(row, cands)
            except GenrecError:
                skipped += 1
                continue
            out.append({"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)})
    return out, skipped, missed


def alignment_examples(builder: PromptBuilder, catalog: dict[str, dict], n: int, seed: int) -> list[dict]:
    """LC-Rec-style alignment: "which item is <code>?" -> title and "what is the code of <title>?" -> code, so
    code tokens are tied to what items are. Items with no title of their own (title = id) are skipped."""
    rng = random.Random(seed)
    items = [i for i, row in catalog.items() if row["title"] != i]
    out = []
    for _ in range(n if items else 0):
        item = rng.choice(items)
        target = builder.index.targets[builder.index.position[item]]
        title = builder.item_view(item)["title"]
        if rng.random() < 0.5:
            question, answer = f"Which item has the code {target}?", builder.plain(title) + [builder.eos_id]
        else:
            question, answer = f"What is the code of the item titled: {title}?", builder.item_tokens(target)
        prompt = builder.wrap("You are a recommender system.", question)
        out.append({"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)})
    return out


def token_batches(lengths: list[int], max_tokens: int, seed: int) -> list[list[int]]:
    """Indices grouped by length into batches of at most `max_tokens` padded tokens (a longer example is a batch
    of its own), in a seeded random batch order: little padding, and no batch mixes two users in one row."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur, longest = [], [], 0
    for i in order:
        if cur and max(longest, lengths[i]) * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, lengths[i])
    if cur:
        batches.append(cur)
    random.Random(seed).shuffle(batches)
    return batches


def example_batches(cfg: SFTConfig, examples: list[dict], builders: dict[str, PromptBuilder],
                    log=print) -> list[list[int]] | None:
    """Token-budget batches (`token_batches`) for the long examples (sequence windows, rerank lists): a fixed
    example count would pad to the longest and run ~2x slower per token on CPU. None for prefix examples alone
    (the trainer batches those itself)."""
    if not any(b.per_window or b.task.ranks_candidates for b in builders.values()):
        return None
    batches = token_batches([len(e["input_ids"]) for e in examples], cfg.max_batch_tokens, cfg.seed)
    if batches:
        real = sum(len(e["input_ids"]) for e in examples)
        padded = sum(len(b) * max(len(examples[i]["input_ids"]) for i in b) for b in batches)
        log(f"token batches: {len(examples)} examples, {sum(sum(e['completion_mask']) for e in examples)} "
            f"target tokens of {real}, {len(batches)} batches of <= {cfg.max_batch_tokens} tokens "
            f"(padding {1 - real / padded:.1%})")
    return batches


def supervised_items(example: dict, builder) -> int:
    """Items an example supervises: one per prefix example, one per masked end token in a sequence window."""
    if not builder.per_window:
        return 1
    return builder.n_targets(example) or 1
