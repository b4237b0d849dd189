"""`genrec sft`: prompt/completion examples from prepared data, LoRA fine-tuning with TRL's SFTTrainer.

We tokenize examples ourselves (prompt ids + completion ids + completion mask) so that training sees exactly the
token sequences that constrained decoding later allows; TRL then masks the prompt out of the loss.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from genrec.config import SFTConfig, to_dict
from genrec.data.prepared import PreparedData, load_prepared
from genrec.items import grounded
from genrec.items.grounded import ITEM_ROW_SCALE, item_rows_from_titles
from genrec.errors import GenrecError
from genrec.files import atomic_file, replace_dir, write_json
from genrec.items.index import ItemIndex
from genrec.model_dir import ModelCard, keep_layers, load_tokenizer, pick_dtype, resolve_base_model
from genrec.prompts.builder import PromptBuilder
from genrec.infer.retriever import KINDS as RETRIEVERS
from genrec.infer.retriever import RETRIEVER_DIR, Retriever
from genrec.prompts.sequence import OBJECTIVES, make_builder


class CodeRows(TrainerCallback):
    """Trains the embedding rows of new code tokens directly, next to LoRA, and saves them with each checkpoint.

    Why not PEFT's trainable_token_indices: with tied embeddings it wraps the output layer too, and TRL's fused
    LM head reads `lm_head.weight` / `.bias` straight from the module, which that wrapper does not provide. Here
    the (tied) embedding matrix is trainable with a gradient mask, so only the new rows ever change (AdamW without
    weight decay leaves rows with zero gradient untouched) and the fused head sees them on both sides.
    """

    FILE = "code_embeddings.safetensors"

    def __init__(self, new_ids: list[int], decay: float = 0.0):
        self.ids = list(new_ids)
        # added tokens are contiguous rows: then their range (the item softmax's rows; a slice scales them in place,
        # ~0.1 ms against ~28 ms for a gather and a scatter of 4,385 rows of 576 on one core)
        ids = self.ids
        self.span = range(ids[0], ids[-1] + 1) if ids and ids == list(range(ids[0], ids[0] + len(ids))) else None
        self.decay = decay  # item_weight_decay: decoupled, on these rows only
        self.weights: list = []

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        # the rate the scheduler has just set (for the next step). Under max_minutes that is the epoch-bound
        # schedule's, not the clock's: it anneals later, so the decay stays near lr x d to the end. That is what
        # was measured (Scientific, d = 2: +0.006 NDCG@10); the clock's rate would be a different, unmeasured d
        if self.decay and self.ids and optimizer is not None:
            self.shrink(optimizer.param_groups[0]["lr"])

    def shrink(self, lr: float) -> None:
        """AdamW's decoupled decay for the new rows after an optimizer step: w <- w (1 - lr x decay)."""
        import torch

        rows = slice(self.span.start, self.span.stop) if self.span else self.ids
        with torch.no_grad():
            for w in self.weights:
                w[rows] = w[rows] * (1 - lr * self.decay)

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def attach(self, model) -> None:
        import torch

        if not self.ids:
            return
        seen = set()
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is None or id(emb.weight) in seen:
                continue
            seen.add(id(emb.weight))
            mask = torch.zeros(emb.weight.shape[0], 1, dtype=emb.weight.dtype, device=emb.weight.device)
            mask[self.ids] = 1
            emb.weight.requires_grad_(True)
            emb.weight.register_hook(lambda g, m=mask: g * m)
            self.weights.append(emb.weight)

    def save(self, directory: Path) -> None:
        if not self.ids:
            return
        from safetensors.torch import save

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"rows_{n}": w.detach()[self.ids].cpu().contiguous() for n, w in enumerate(self.weights)}
        with atomic_file(directory / self.FILE, "wb") as fh:
            fh.write(save(tensors))

    def load(self, directory: Path) -> None:
        if not self.ids:
            return
        from safetensors.torch import load_file

        path = directory / self.FILE
        if not path.is_file():
            raise GenrecError(f"{directory} has no {self.FILE}: cannot resume the code-token embeddings")
        tensors = load_file(str(path))
        for n, w in enumerate(self.weights):
            w.data[self.ids] = tensors[f"rows_{n}"].to(w.device, w.dtype)


def ground_items(cfg: SFTConfig, model, tok, index: ItemIndex, data: PreparedData, new_ids: list[int],
                 log=print):
    """item_text=grounded: the base model reads every item's text once (before any adapter) and the rows become
    grounded.ItemRows over those readings, starting at the scale of the title-shaped rows; None for init."""
    if cfg.item_text == "init":
        return None
    if not index.stats.get("text"):  # nothing to read: today's rows, said once
        log("item_text=grounded: this catalog has no item text (item ids stand in for titles), so the rows are "
            "item_text=init's")
        return None
    from genrec.items.text import item_text

    t0 = time.time()
    features = grounded.text_features(model, tok, [item_text(data.catalog[i]) for i in index.item_ids])
    vocab = model.get_input_embeddings().weight.detach()[:min(new_ids)]
    log(f"item_text=grounded: read {len(features)} item texts in {time.time() - t0:.0f}s")
    import torch

    counts = data.training_counts()
    return grounded.ItemRows(features, ITEM_ROW_SCALE * float(vocab.norm(dim=1).mean()),
                             torch.tensor([counts[i] > 0 for i in index.item_ids]))


def build_index(data: PreparedData, cfg: SFTConfig, log=print) -> ItemIndex:
    """The item identifiers the model will write; semantic ids learn from the training part of sequences only."""
    histories = [data.train_items(u) for u in data.users.values()]
    has_text = data.manifest.get("columns", {}).get("title") is not None
    index = ItemIndex.build(list(data.catalog.values()), cfg.item_id, histories, has_text, cfg.seed,
                            cfg.semantic_levels, cfg.semantic_codebook, cfg.semantic_text_weight)
    if index.style == "semantic":
        st = index.stats
        log(f"semantic ids: {st['distinct_prefixes']} distinct codes of {st['levels']} levels for "
            f"{len(index.item_ids)} items ({st['collided_items']} items share a code, disambiguated; "
            f"text {'on' if st['text'] else 'off'})")
    return index


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


def given_retriever(cfg: SFTConfig, data: PreparedData) -> Retriever | None:
    """`retriever=DIR`: the retriever trained before (a model directory or its retriever/ folder), checked to be for
    this catalog; None when the run trains its own (retriever=sasrec)."""
    kind = cfg.retriever or "sasrec"
    if kind in RETRIEVERS:
        return None
    found = Retriever.load(kind)
    if found is None:
        raise GenrecError(f"retriever={kind}: neither a known kind ({', '.join(RETRIEVERS)}) nor a directory holding "
                          "a retriever")
    if found.items != sorted(data.catalog):
        raise GenrecError(f"retriever={kind} was trained on another catalog than {cfg.data}")
    return found


def fit_retriever(cfg: SFTConfig, data: PreparedData, out: Path, log=print) -> Retriever:
    """The run's retriever: the one already in `out` when resuming; a given one (`retriever=DIR`), copied in; else
    SASRec trained now. It is saved into `out` at once, so a resumed run never trains it twice."""
    given = given_retriever(cfg, data)
    if given is not None:
        log(f"retriever: reusing {cfg.retriever}")
        given.save(out)
        return given
    if cfg.resume:
        found = Retriever.load(out)
        if found is not None:
            log(f"retriever: reusing {out / RETRIEVER_DIR}")
            return found
    log("retriever: training sasrec on the training part of every sequence")
    r = Retriever.train(data, seed=cfg.seed, max_seconds=cfg.retriever_seconds, log=log)
    r.save(out)
    return r


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
        objective=cfg.objective if t == "next_item" else "prefix"), catalog, index) for n, t in enumerate(tasks)}


def sequence_examples(builder, data: PreparedData, seed: int) -> list[dict]:
    """Every user's training part (the sequence less its valid and test items) as windows, in a seeded order."""
    from tqdm.auto import tqdm

    out = []
    for u in tqdm(list(data.users.values()), desc="tokenizing sequences", unit="user", mininterval=1.0):
        train_items = data.train_items(u)
        n = len(train_items)
        out += builder.sequence_examples(train_items, u["timestamps"][:n],
                                         u["ratings"][:n] if u.get("ratings") else None)
    random.Random(seed).shuffle(out)
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


class SaveEvery(TrainerCallback):
    """`save_minutes`: a checkpoint whenever another M minutes of training have passed (steps differ in cost, so a
    learning curve over a time budget needs checkpoints by the clock, not by step count)."""

    def __init__(self, minutes: float, used=None):
        self.every = minutes * 60
        self._t0 = None
        self.used = used or (lambda: time.time() - self._t0)
        self.next = None

    def on_train_begin(self, args, state, control, **kw):
        self._t0 = time.time()
        self.next = (self.used() // self.every + 1) * self.every  # resumed: the clock goes on from the time used

    def on_step_end(self, args, state, control, **kw):
        used = self.used()
        if used >= self.next:
            control.should_save = True
            self.next = (used // self.every + 1) * self.every


class Clock(TrainerCallback):
    """`max_minutes`: the learning rate follows the clock (linear warmup by steps, then cosine over the time budget,
    reaching 0 at the end) and training stops when the budget is spent; the time used survives --resume."""

    FILE = "clock.json"

    def __init__(self, minutes: float, lr: float, warmup_steps: int):
        self.budget, self.lr, self.warmup = minutes * 60, lr, warmup_steps
        self.before, self.t0, self.last_lr = 0.0, None, None

    def used(self) -> float:
        return self.before + (time.time() - self.t0 if self.t0 is not None else 0.0)

    def synced(self, args) -> float:
        """The time used as every process sees it: the largest, so all processes take the same learning rate and
        stop at the same step (a process that stopped alone would leave the others waiting in all-reduce)."""
        used = self.used()
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            t = torch.tensor([used], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            used = float(t.item())
        return used

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.time()

    def on_step_begin(self, args, state, control, optimizer=None, **kw):
        import math

        frac = min(self.synced(args) / self.budget, 1.0)
        factor = 0.5 * (1 + math.cos(math.pi * frac))
        if state.global_step < self.warmup:
            factor *= (state.global_step + 1) / self.warmup
        self.last_lr = self.lr * factor  # what this step's optimizer.step uses (the scheduler's value comes after)
        for g in optimizer.param_groups if optimizer is not None else []:
            g["lr"] = self.last_lr

    def on_optimizer_step(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        # the Trainer logs (console, trackers, trainer_state) the scheduler's last rate, read right after this: make
        # it the rate this step's optimizer used, which the clock set (torch's schedulers keep it in _last_lr; their
        # next step recomputes from their own count, so this changes no schedule)
        if optimizer is not None and lr_scheduler is not None:
            lr_scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]

    def on_step_end(self, args, state, control, **kw):
        if self.synced(args) >= self.budget:
            control.should_training_stop = True
            control.should_save = False

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            ckpt.mkdir(parents=True, exist_ok=True)
            write_json(ckpt / self.FILE, {"seconds": self.used()})

    def load(self, ckpt: Path) -> None:
        path = ckpt / self.FILE
        if path.is_file():
            self.before = float(json.loads(path.read_text())["seconds"])


class MinutesBar(TrainerCallback):
    """The progress bar of a `max_minutes` run: minutes used of the budget, not steps. Why: the Trainer's bar counts
    the epoch-bound step total (1,900 steps, "1:04:00" left, for an 8-minute run); the clock ends the run first."""

    def __init__(self, clock: Clock):
        self.clock, self.bar = clock, None

    def on_train_begin(self, args, state, control, **kw):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=round(self.clock.budget / 60, 2), unit="min", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} min [{elapsed}<{remaining}{postfix}]")
            self.bar.update(round(self.clock.before / 60, 2))  # a resumed run starts where its clock was

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(min(self.clock.used(), self.clock.budget) / 60 - self.bar.n)
            self.bar.set_postfix_str(f"step {state.global_step}", refresh=False)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.bar is not None and logs:
            self.bar.write(str({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items()
                                if k != "total_flos"}))

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _targets(example: dict, builder) -> int:
    """Items an example supervises: one per prefix example, one per masked end token in a sequence window."""
    if builder.objective != "sequence":
        return 1
    return builder.n_targets(example) or 1


GROUNDED_SCOPE = ("item_text=grounded builds item-token rows for the item softmax: item_id=token with the sequence "
                  "objective and the next_item task alone")
SMOOTHING_SCOPE = "label_smoothing applies to the item softmax: item_id=token with the sequence objective"


def item_softmax_loss(model, inputs: dict, rows: range, num_items_in_batch=None, smoothing: float = 0.0,
                      item_matrix=None):
    """Cross-entropy of each supervised next token over the item tokens' rows alone (SASRec's full softmax over
    the catalog), from the final hidden states of the supervised positions only.

    Why: with item_id=token every supervised token is an item, and the search only ever compares items, so the
    other ~49k vocabulary logits are never needed; computing them at every position was half of a training step's
    time on CPU (measured: 5.1 s -> 3.0 s for a 1,024-token batch)."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    hidden = body(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).last_hidden_state
    target = inputs["labels"][:, 1:]
    keep = target != -100
    y = target[keep] - rows.start  # every supervised token is an item token: checked once, before training
    # item_text=grounded: the rows come from grounded.ItemRows (`item_matrix()`), not the embedding matrix
    matrix = item_matrix() if item_matrix is not None else base.get_output_embeddings().weight[rows.start:rows.stop]
    logits = hidden[:, :-1][keep] @ matrix.t()
    if num_items_in_batch is None:
        return F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
    # the Trainer sums micro-batch losses under gradient accumulation: normalise by the accumulated target count
    return F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=smoothing) / num_items_in_batch


def embedding_dropout(model, p: float) -> None:
    """`embedding_dropout=p`: dropout on the input embeddings' output, active in training mode only (a forward
    hook: nothing of it is saved, so the written model is unchanged at inference)."""
    if not 0 <= p < 1:
        raise GenrecError(f"embedding_dropout must be in [0, 1), got {p}")
    if p:
        import torch.nn.functional as F

        model.get_input_embeddings().register_forward_hook(lambda mod, args, out: F.dropout(out, p, mod.training))


def token_batch_trainer(base):
    """SFTTrainer whose training batches are given (token-budget batches) instead of a fixed example count, and
    whose loss is the item softmax (`item_softmax_loss`) when given the item tokens' rows."""

    class TokenBatchTrainer(base):
        def __init__(self, *args, batches: list[list[int]], item_rows: range | None = None,
                     label_smoothing: float = 0.0, item_matrix=None, **kw):
            self._batches = batches
            self._item_rows = item_rows
            self._item_matrix = item_matrix
            self._smoothing = label_smoothing
            super().__init__(*args, **kw)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._item_rows is None or return_outputs:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            return item_softmax_loss(model, inputs, self._item_rows, num_items_in_batch, self._smoothing,
                                     self._item_matrix)

        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

            ds = self._remove_unused_columns(self.train_dataset, description="training")
            return self.accelerator.prepare(DataLoader(ds, batch_sampler=self._batches, collate_fn=self.data_collator,
                                                       num_workers=0))

    return TokenBatchTrainer


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
    seq = [t for t, b in builders.items() if b.objective == "sequence"]
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
    if cfg.align_examples > 0 and index.style != "title":
        examples += alignment_examples(builder, data.catalog, int(cfg.align_examples * len(examples)), cfg.seed)
    random.Random(cfg.seed).shuffle(examples)
    for task, n in skipped.items():
        if n:
            log(f"skipped {n} {task} example(s) that could not be rendered within the prompt budget")
    return examples, sum(skipped.values())


CHECKPOINT_DONE = "genrec-checkpoint.json"  # written last into each checkpoint, after genrec's own files


class CheckpointDone(TrainerCallback):
    """Marks a checkpoint complete once every file of it is written: the trainer's (before on_save), then genrec's
    (CodeRows, Clock: earlier callbacks of on_save). Registered last. A kill between those files leaves a
    checkpoint without the marker, which `last_checkpoint` passes over."""

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_json(ckpt / CHECKPOINT_DONE, {"step": state.global_step})


def last_checkpoint(out: Path) -> Path | None:
    """Newest complete checkpoint: the trainer's state and genrec's marker are both there (a kill during a save
    leaves one without them; --resume then continues from the one before)."""
    saved = [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").is_file()]
    done = [p for p in saved if (p / CHECKPOINT_DONE).is_file()]
    if not done and not any((p / CHECKPOINT_DONE).is_file() for p in out.glob("checkpoint-*")):
        done = saved  # a run from before the marker existed: the trainer's state is all there is to go by
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def is_run(path: Path) -> bool:
    """Whether genrec wrote this directory: a model card, a checkpoint or a loss log. Only such a directory is ever
    replaced by --overwrite."""
    return ModelCard.exists(path) or any(path.glob("checkpoint-*")) or (path / "loss.jsonl").is_file() or \
        (path / RETRIEVER_DIR).is_dir()  # a run killed after its retriever, before its first step


def staging(out: Path) -> Path:
    """Where an --overwrite run trains: a sibling that replaces `out` only once its model is complete."""
    return out.parent / f".{out.name}.next"


def run_dir(cfg: SFTConfig) -> Path:
    """The directory this run trains in (every process computes the same one): `output` itself, or its staging
    sibling when `output` already holds something (--overwrite), or when --resume continues a staged run."""
    out = Path(cfg.output)
    if cfg.resume:  # an interrupted --overwrite run is what there is to resume, if there is one
        return staging(out) if staging(out).is_dir() else out
    return staging(out) if cfg.overwrite and out.is_dir() and any(out.iterdir()) else out


def _prepare_output(cfg: SFTConfig) -> Path:
    """Check `output` and make the run's directory (`run_dir`). Nothing is deleted here but a stale staging
    directory of an earlier --overwrite run: the old model stays until the new one is complete (`_finish_output`),
    and a directory genrec did not write is never replaced."""
    out, work = Path(cfg.output), run_dir(cfg)
    if cfg.resume and cfg.overwrite:
        raise GenrecError("--resume continues a run and --overwrite starts one afresh: pass one of them")
    if out.exists() and not out.is_dir():
        raise GenrecError(f"output {out} is a file, not a directory")
    if cfg.resume:
        if work != out and last_checkpoint(work) is None:
            raise GenrecError(f"--resume: the interrupted --overwrite run in {work} stopped before its first "
                              "checkpoint: start it again with --overwrite")
        if work == out and ModelCard.exists(out):
            raise GenrecError(f"--resume: {out} already holds a finished model (--resume continues unfinished runs; "
                              "--overwrite trains a new one)")
        if last_checkpoint(work) is None:
            raise GenrecError(f"--resume: {out} holds no checkpoint to resume from")
        return work
    if work == out:
        if out.is_dir() and any(out.iterdir()):
            if ModelCard.exists(out):
                raise GenrecError(f"output {out} already holds a trained model (pass --overwrite to replace it)")
            if is_run(out):
                raise GenrecError(f"output {out} holds an unfinished run (pass --resume to continue or --overwrite)")
            raise GenrecError(f"output {out} is not empty and holds no genrec run: choose another --output")
        out.mkdir(parents=True, exist_ok=True)
        return out
    if not is_run(out):
        raise GenrecError(f"--overwrite: {out} holds no genrec run (no {ModelCard.CARD}, checkpoint or loss.jsonl): "
                          "refusing to delete it; choose another --output")
    if work.exists():
        if any(work.iterdir()) and not is_run(work):
            raise GenrecError(f"--overwrite: {work} is in the way and holds no genrec run: move it")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


def _init_adapter(cfg: SFTConfig, base: Path, index: ItemIndex) -> Path | None:
    """The genrec model whose LoRA adapter this run continues (cross-domain transfer), checked to fit: same base
    model, titles on both sides (ids and codes name items of one catalog only)."""
    if not cfg.init_from:
        return None
    init = Path(cfg.init_from)
    try:
        card = ModelCard.load(init)
    except GenrecError as exc:
        raise GenrecError(f"init_from: {exc}") from None
    if card.id_style != "title" or index.style != "title":
        raise GenrecError("init_from: transfer between datasets needs item_id=title on both models "
                          "(ids and semantic codes only name items of the catalog they were built on)")
    if cfg.layers is not None or card.sft.get("layers") is not None:
        raise GenrecError("init_from: transfer continues an adapter of the whole base model (leave layers unset on "
                          "both models)")
    if not card.adapter or not (init / "adapter_config.json").is_file():
        raise GenrecError(f"init_from: {init} holds no LoRA adapter")
    if card.base_path().resolve() != base.resolve():
        raise GenrecError(f"init_from: {init} was trained on another base model ({card.base_model})")
    return init


def _plot_loss(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(png_path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def write_artefacts(out: Path, model, tok, index: ItemIndex, data: PreparedData, builders: dict[str, PromptBuilder],
                    merge: bool) -> dict[str, dict]:
    """The model directory's files but its card (ModelCard.write_files), and the loss plot."""
    tasks = ModelCard.write_files(out, model, tok, index, list(data.catalog.values()),
                                  dict(data.training_counts().most_common()),
                                  {t: (b.template.path, to_dict(b.cfg)) for t, b in builders.items()}, merge)
    if (out / "loss.jsonl").exists():
        _plot_loss(out / "loss.jsonl", out / "loss.png")
    return tasks


def check_trackers(names: list[str]) -> None:
    """report_to: each tracker known to transformers and installed, checked before anything is loaded or written
    (transformers would otherwise fail with a traceback when the trainer starts, after the model has loaded)."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in names:
        if name in ("none", "", "all"):  # "all": whichever are installed (transformers' own rule)
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise GenrecError(f"report_to: unknown tracker {name!r} (known: {', '.join(sorted(INTEGRATION_TO_CALLBACK))})")
        if name not in get_available_reporting_integrations():
            raise GenrecError(f"report_to: {name} is not installed here (pip install {name.replace('_', '-')})")


def train(cfg: SFTConfig, log=print) -> Path:
    """Fine-tune and write a self-contained model directory; `genrec.json` is written last (= complete)."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer
    from datasets import Dataset

    for name in ("max_minutes", "save_minutes"):
        if getattr(cfg, name) is not None and not getattr(cfg, name) > 0:
            raise GenrecError(f"{name} must be > 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.label_smoothing < 1:
        raise GenrecError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.label_smoothing and (cfg.item_id != "token" or cfg.objective != "sequence"):
        raise GenrecError(SMOOTHING_SCOPE)
    if cfg.item_weight_decay < 0 or cfg.item_weight_decay and cfg.item_id not in ("token", "semantic"):
        raise GenrecError("item_weight_decay must be >= 0 and applies to new item tokens: item_id=token or semantic")
    if cfg.item_text not in grounded.STYLES:
        raise GenrecError(f"unknown item_text {cfg.item_text!r} ({', '.join(grounded.STYLES)})")
    if cfg.item_text == "grounded" and (cfg.item_id != "token" or cfg.objective != "sequence"):
        raise GenrecError(GROUNDED_SCOPE)
    check_trackers(cfg.report_to)
    if cfg.grad_accum < 1:
        raise GenrecError(f"grad_accum must be >= 1, got {cfg.grad_accum}")
    data = load_prepared(cfg.data)
    base = resolve_base_model(cfg.model)
    if cfg.max_steps <= 0 and cfg.num_epochs <= 0:
        raise GenrecError("set max_steps > 0 or num_epochs > 0")
    tasks = cfg.tasks or [cfg.prompt.task]
    want_retriever = cfg.retriever not in (None, "", "none") or "rerank" in tasks
    if "rerank" in tasks and cfg.retriever == "none":
        raise GenrecError("the rerank task ranks a retriever's candidates: it needs retriever=sasrec")
    if not 1 <= cfg.prompt.rerank_candidates <= 26 or cfg.rerank_copies < 1:
        raise GenrecError("prompt.rerank_candidates must be 1-26 and rerank_copies >= 1")
    if want_retriever:
        given_retriever(cfg, data)  # a bad retriever=DIR fails before anything is written
    dtype = pick_dtype(cfg.dtype)
    cuda = torch.cuda.is_available()
    final = Path(cfg.output)
    out = run_dir(cfg)  # `final`, or its staging sibling: --overwrite keeps the old model until this one is done
    args = TRLConfig(
        output_dir=str(out), max_steps=cfg.max_steps if cfg.max_steps > 0 else -1, num_train_epochs=cfg.num_epochs,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, optim="adamw_torch", logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=cfg.keep_checkpoints, seed=cfg.seed, data_seed=cfg.seed,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=not cuda,
        gradient_checkpointing=cfg.activation_checkpointing, completion_only_loss=True, max_length=None,
        report_to=list(cfg.report_to), dataloader_num_workers=0, save_only_model=False, disable_tqdm=False,
        dataset_num_proc=None,
    )
    # Distributed runs (accelerate launch): the main process alone prepares the output directory and trains the
    # retriever; the others wait, then read what it wrote. Every process builds the same examples (seeded).
    with args.main_process_first(local=False, desc="the model directory"):
        if args.process_index == 0:
            out = _prepare_output(cfg)
            retriever = fit_retriever(cfg, data, out, log) if want_retriever else None
        else:
            retriever = Retriever.load(out) if want_retriever else None
    tok = load_tokenizer(base)
    index = build_index(data, cfg, log)
    if index.new_tokens:
        tok.add_tokens(index.new_tokens)
    builders = task_builders(tok, cfg, data.catalog, index)
    builder = next(iter(builders.values()))  # the main task

    examples, skipped = training_examples(cfg, data, builders, retriever, args.world_size, log)
    seq = [t for t, b in builders.items() if b.objective == "sequence"]

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    keep_layers(model, cfg.layers)
    embedding_dropout(model, cfg.embedding_dropout)
    init = _init_adapter(cfg, base, index)
    new_ids = tok.convert_tokens_to_ids(index.new_tokens) if index.new_tokens else []
    if new_ids:
        if cfg.weight_decay:
            raise GenrecError(f"item_id={index.style} trains new embedding rows directly: set weight_decay=0")
        torch.manual_seed(cfg.seed)
        model.resize_token_embeddings(len(tok))
        if index.style == "token" and index.stats.get("text"):
            item_rows_from_titles(model, tok, index, data.catalog)
    grounded_rows = ground_items(cfg, model, tok, index, data, new_ids, log)
    # token-budget batches for the long examples (sequence windows, rerank lists): a fixed example count would pad
    # to the longest and run ~2x slower per token on CPU
    batches = token_batches([len(e["input_ids"]) for e in examples], cfg.max_batch_tokens, cfg.seed) \
        if seq or "rerank" in builders else None
    if batches:
        real = sum(len(e["input_ids"]) for e in examples)
        padded = sum(len(b) * max(len(examples[i]["input_ids"]) for i in b) for b in batches)
        log(f"token batches: {len(examples)} examples, {sum(sum(e['completion_mask']) for e in examples)} "
            f"target tokens of {real}, {len(batches)} batches of <= {cfg.max_batch_tokens} tokens "
            f"(padding {1 - real / padded:.1%})")
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=cfg.lora_target_modules if cfg.lora_target_modules == "all-linear"
                             else [m.strip() for m in cfg.lora_target_modules.split(",")],
                             task_type="CAUSAL_LM")
    loss_log = out / "loss.jsonl"

    class LossLog(TrainerCallback):
        def on_log(self, args_, state, control, logs=None, optimizer=None, **kw):
            if state.is_world_process_zero and logs and "loss" in logs:
                # the rate the optimizer used (under max_minutes the clock's: Clock.on_optimizer_step)
                with open(loss_log, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": state.global_step, "loss": logs["loss"],
                                         "learning_rate": logs.get("learning_rate"),
                                         "seconds": time.time() - t0}) + "\n")

    if not cfg.resume and loss_log.exists() and args.process_index == 0:
        loss_log.unlink()
    if init is not None:  # transfer: continue the given model's adapter (its LoRA settings apply)
        from peft import PeftModel

        log(f"starting from the adapter of {init}")
        model, peft_config = PeftModel.from_pretrained(model, str(init), is_trainable=True), None
    # grounded rows decay their residuals instead of the embedding rows (which they overwrite at every save)
    code_rows = CodeRows(new_ids, 0.0 if grounded_rows is not None else cfg.item_weight_decay)
    callbacks = [LossLog(), code_rows]
    if grounded_rows is not None:  # before CodeRows: its on_save writes the rows this one puts in the matrices
        callbacks.insert(1, grounded.GroundedRows(grounded_rows, code_rows.span, cfg.item_weight_decay))
    clock = None
    if cfg.max_minutes is not None:
        steps = len(batches) if batches else -(-len(examples) // cfg.batch_size)
        clock = Clock(cfg.max_minutes, cfg.learning_rate, max(1, int(cfg.warmup_ratio * min(steps, 200))))
    if cfg.save_minutes:  # before the clock: at the budget's end the clock cancels a save (the model is written)
        callbacks.append(SaveEvery(cfg.save_minutes, clock.used if clock is not None else None))
    if clock is not None:
        callbacks.append(clock)
    callbacks.append(CheckpointDone())  # last: after every file of a checkpoint
    # item tokens in sequence lists only: every supervised token is an item, so the loss is the item softmax
    item_rows = code_rows.span if index.style == "token" and len(seq) == len(builders) else None
    if item_rows is not None and any(t not in item_rows for e in examples
                                     for t, m in zip(e["input_ids"], e["completion_mask"]) if m):
        raise GenrecError("item softmax: a supervised token is not an item token (a template writes other text "
                          "after an item)")
    if cfg.label_smoothing and item_rows is None:
        raise GenrecError(SMOOTHING_SCOPE)
    if grounded_rows is not None and item_rows is None:
        raise GenrecError(GROUNDED_SCOPE)
    trainer_cls = token_batch_trainer(SFTTrainer) if batches else SFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tok,
                          peft_config=peft_config, callbacks=callbacks,
                          **({"batches": batches, "item_rows": item_rows, "label_smoothing": cfg.label_smoothing,
                              "item_matrix": grounded_rows} if batches else {}))
    code_rows.attach(trainer.model)
    if grounded_rows is not None:  # a submodule: the optimizer (made in train()) takes W, b and the residuals
        trainer.model.add_module("genrec_item_rows", grounded_rows)
        grounded.attach(trainer.model, grounded_rows, code_rows.span)
    if clock is not None:  # the bar counts the clock's minutes, not the epoch-bound steps
        from transformers.trainer_callback import ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(MinutesBar(clock))
    if item_rows is not None:
        log(f"loss: the softmax over the {len(item_rows)} item tokens at each supervised position")
    t0 = time.time()
    ckpt = last_checkpoint(out) if cfg.resume else None
    if ckpt is not None:
        log(f"resuming from {ckpt}")
        code_rows.load(ckpt)
        if grounded_rows is not None:
            grounded_rows.load(ckpt)
        if clock is not None:
            clock.load(ckpt)
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    elapsed = time.time() - t0
    if not trainer.is_world_process_zero():
        return out

    if grounded_rows is not None:  # the final rows into the matrices, and W, b, f kept for items added later
        grounded.write_rows(trainer.model, grounded_rows, code_rows.span)
        grounded_rows.save(out)
    code_rows.save(out)
    # vLLM's LoRA cannot add vocabulary, and a cut decoder is not the base model: both serve the merged model
    merge = cfg.merge or bool(new_ids) or cfg.layers is not None
    tasks = write_artefacts(out, trainer.model, tok, index, data, builders, merge)
    ModelCard(
        dir=out, base_model="default" if cfg.model in ("default", None, "") else str(base.resolve()),
        data=str(Path(cfg.data).resolve()), prompt=next(iter(tasks.values())), tasks=tasks, id_style=index.style,
        adapter=True, merged=ModelCard.MERGED if merge else None, init_from=str(init.resolve()) if init else None,
        retriever={"kind": retriever.settings["kind"], "dir": RETRIEVER_DIR, "facts": retriever.facts}
        if retriever is not None else None,
        with_reasons=builder.with_reasons, objective=cfg.objective if "next_item" in builders else "prefix",
        sft=to_dict(cfg), stats={
            "train_examples": len(examples),
            "target_tokens": sum(sum(e["completion_mask"]) for e in examples),
            "train_tokens": sum(len(e["input_ids"]) for e in examples),
            "stopped_by_clock": bool(clock is not None and clock.used() >= clock.budget),
            "train_targets": sum(_targets(e, builder) for e in examples),  # supervised items in the example set
            # TRL counts the tokens it trained on; given token batches it does not, and their mean size stands in
            "tokens_seen": next((float(r["num_tokens"]) for r in reversed(trainer.state.log_history)
                                 if "num_tokens" in r), None) or (round(real / len(batches) * trainer.state.global_step)
                                                                  if batches else None),
            "skipped_examples": skipped,
            "train_loss": result.training_loss,
            "train_seconds": elapsed,
            "global_step": trainer.state.global_step,
            "processes": args.world_size,  # a global batch is batch_size x grad_accum x processes examples
            "global_batch": cfg.batch_size * cfg.grad_accum * args.world_size if not batches else None,
        }).save()  # last: its presence means "complete"
    if out != final:
        replace_dir(out, final)
        ModelCard.load(final).write_readme()  # its commands name the directory the model now lives in
    out = final
    log(f"model written to {out} ({trainer.state.global_step} steps, {elapsed:.0f}s, loss {result.training_loss:.3f})")
    if retriever is not None:
        log(f"it has a retriever: `genrec tune-fusion --model {out}` chooses the hybrid's weight on validation users")
    return out
