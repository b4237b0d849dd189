"""The trainer callbacks of `genrec sft`: what genrec adds to TRL's training loop, each one job. The new code
tokens' rows (`CodeRows`), the loss log (`LossLog`), checkpoints by the clock (`SaveEvery`), the time budget
(`Clock`, `MinutesBar`) and the marker that a checkpoint is complete (`CheckpointDone`, registered last);
`trainer_callbacks` puts them in that order.

Every file they write is named in genrec.model_dir, the one owner of the model directory's layout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from genrec.config import SFTConfig
from genrec.errors import GenrecError
from genrec.files import atomic_file, write_json
from genrec.items import grounded
from genrec.model_dir import CHECKPOINT_DONE, CLOCK, ModelCard, checkpoint_dir


class CodeRows(TrainerCallback):
    """Trains the embedding rows of new code tokens directly, next to LoRA, and saves them with each checkpoint.

    Why not PEFT's trainable_token_indices: with tied embeddings it wraps the output layer too, and TRL's fused
    LM head reads `lm_head.weight` / `.bias` straight from the module, which that wrapper does not provide. Here
    the (tied) embedding matrix is trainable with a gradient mask, so only the new rows ever change (AdamW without
    weight decay leaves rows with zero gradient untouched) and the fused head sees them on both sides.
    """

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
            self.save(checkpoint_dir(args.output_dir, state.global_step))

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
        with atomic_file(directory / ModelCard.CODE_ROWS, "wb") as fh:
            fh.write(save(tensors))

    def load(self, directory: Path) -> None:
        if not self.ids:
            return
        from safetensors.torch import load_file

        path = directory / ModelCard.CODE_ROWS
        if not path.is_file():
            raise GenrecError(f"{directory} has no {ModelCard.CODE_ROWS}: cannot resume the code-token embeddings")
        tensors = load_file(str(path))
        for n, w in enumerate(self.weights):
            w.data[self.ids] = tensors[f"rows_{n}"].to(w.device, w.dtype)


class LossLog(TrainerCallback):
    """loss.jsonl: one line per logged step (step, loss, learning rate, seconds since `start`), written by the main
    process alone. The recipe calls `start` right before training, so its seconds and the card's train_seconds
    count from the same moment."""

    def __init__(self, path: Path):
        self.path, self.t0 = path, None

    def start(self) -> float:
        self.t0 = time.time()
        return self.t0

    def on_log(self, args, state, control, logs=None, optimizer=None, **kw):
        if state.is_world_process_zero and logs and "loss" in logs:
            # the rate the optimizer used (under max_minutes the clock's: Clock.on_optimizer_step)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, "loss": logs["loss"],
                                     "learning_rate": logs.get("learning_rate"),
                                     "seconds": time.time() - self.t0}) + "\n")


def clock_source(name: str):
    """The seconds `SFTConfig.clock` counts: wall-clock, or (cpu) this process's CPU seconds over its torch threads.
    Why the second: two arms given "30 minutes" on a shared 2-core machine got 371 and 1,105 steps of the same
    model (docs/results.md); CPU time is what each really got, and it advances only as the process runs."""
    if name == "wall":
        return time.time
    import torch

    threads = max(1, torch.get_num_threads())
    return lambda: time.process_time() / threads


class SaveEvery(TrainerCallback):
    """`save_minutes`: a checkpoint whenever another M minutes of training have passed (steps differ in cost, so a
    learning curve over a time budget needs checkpoints by the clock, not by step count)."""

    def __init__(self, minutes: float, used=None, now=time.time):
        self.every = minutes * 60
        self._t0, self.now = None, now
        self.used = used or (lambda: self.now() - self._t0)
        self.next = None

    def on_train_begin(self, args, state, control, **kw):
        self._t0 = self.now()
        self.next = (self.used() // self.every + 1) * self.every  # resumed: the clock goes on from the time used

    def on_step_end(self, args, state, control, **kw):
        used = self.used()
        if used >= self.next:
            control.should_save = True
            self.next = (used // self.every + 1) * self.every


class Clock(TrainerCallback):
    """`max_minutes`: the learning rate follows the clock (linear warmup by steps, then cosine over the time budget,
    reaching 0 at the end) and training stops when the budget is spent; the time used survives --resume."""

    def __init__(self, minutes: float, lr: float, warmup_steps: int, now=time.time):
        self.budget, self.lr, self.warmup, self.now = minutes * 60, lr, warmup_steps, now
        self.before, self.t0, self.last_lr = 0.0, None, None

    def used(self) -> float:
        return self.before + (self.now() - self.t0 if self.t0 is not None else 0.0)

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
        self.t0 = self.now()

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
            ckpt = checkpoint_dir(args.output_dir, state.global_step)
            ckpt.mkdir(parents=True, exist_ok=True)
            write_json(ckpt / CLOCK, {"seconds": self.used()})

    def load(self, ckpt: Path) -> None:
        path = ckpt / CLOCK
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


class CheckpointDone(TrainerCallback):
    """Marks a checkpoint complete once every file of it is written: the trainer's (before on_save), then genrec's
    (CodeRows, Clock: earlier callbacks of on_save). Registered last. A kill between those files leaves a
    checkpoint without the marker, which `genrec.model_dir.last_checkpoint` passes over."""

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            write_json(checkpoint_dir(args.output_dir, state.global_step) / CHECKPOINT_DONE,
                       {"step": state.global_step})


def trainer_callbacks(cfg: SFTConfig, new_ids: list[int], grounded_rows: grounded.ItemRows | None,
                      loss_log: LossLog, batches: list[list[int]] | None,
                      n_examples: int) -> tuple[CodeRows, Clock | None, list[TrainerCallback]]:
    """genrec's callbacks for a run, in the order their on_save must run (CheckpointDone last), with the two the
    recipe reaches into: the code rows and the clock (None without max_minutes)."""
    # grounded rows decay their residuals instead of the embedding rows (which they overwrite at every save)
    code_rows = CodeRows(new_ids, 0.0 if grounded_rows is not None else cfg.item_weight_decay)
    callbacks = [loss_log, code_rows]
    if grounded_rows is not None:  # before CodeRows: its on_save writes the rows this one puts in the matrices
        callbacks.insert(1, grounded.GroundedRows(grounded_rows, code_rows.span, cfg.item_weight_decay,
                                                  lambda out, step: checkpoint_dir(out, step) / ModelCard.ITEM_TEXT))
    clock = None
    if cfg.max_minutes is not None:
        steps = len(batches) if batches else -(-n_examples // cfg.batch_size)
        clock = Clock(cfg.max_minutes, cfg.learning_rate, max(1, int(cfg.warmup_ratio * min(steps, 200))),
                      clock_source(cfg.clock))
    if cfg.save_minutes:  # before the clock: at the budget's end the clock cancels a save (the model is written)
        callbacks.append(SaveEvery(cfg.save_minutes, clock.used if clock is not None else None,
                                   clock_source(cfg.clock)))
    if clock is not None:
        callbacks.append(clock)
    callbacks.append(CheckpointDone())  # last: after every file of a checkpoint
    return code_rows, clock, callbacks
