"""`genrec sft`: LoRA fine-tuning with TRL's SFTTrainer, as a recipe of named steps:

    setup -> load_model -> make_trainer -> fit -> save

`setup` checks the settings, reads the prepared data, makes the run's directory (and trains its retriever) and
tokenizes every task's examples; `load_model` readies the base model and the new item tokens' rows; `make_trainer`
puts the adapter, genrec's callbacks and the loss together; `fit` trains (resuming from the newest complete
checkpoint under --resume); `save` writes the model directory, `genrec.json` last (= complete).

The parts live beside this file: examples.py (what is trained on), losses.py (the item softmax and the trainer
that takes it), callbacks.py (what genrec adds to the training loop), output.py (the run's directory).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from genrec.config import CLOCKS, GROUNDED_RESIDUAL_DROPOUT, SFTConfig, to_dict
from genrec.data.prepared import PreparedData, load_prepared
from genrec.errors import GenrecError
from genrec.infer.retriever import Retriever
from genrec.items import grounded
from genrec.items.grounded import ITEM_ROW_SCALE, item_rows_from_titles
from genrec.items.index import ItemIndex, id_style
from genrec.model_dir import ModelCard, keep_layers, last_checkpoint, load_tokenizer, pick_dtype, resolve_base_model
from genrec.prompts.builder import PromptBuilder
from genrec.prompts.sequence import OBJECTIVE
from genrec.prompts.tasks import RERANK_LABELS, TASKS
from genrec.train.callbacks import Clock, CodeRows, LossLog, MinutesBar, trainer_callbacks
from genrec.train.examples import build_index, example_batches, supervised_items, task_builders, training_examples
from genrec.train.losses import GROUNDED_SCOPE, SMOOTHING_SCOPE, embedding_dropout, item_softmax_rows, \
    token_batch_trainer
from genrec.train.output import finish_output, fit_retriever, given_retriever, init_adapter, prepare_output, run_dir, \
    write_artefacts


def train(cfg: SFTConfig, log=print) -> Path:
    """Fine-tune and write a self-contained model directory; `genrec.json` is written last (= complete)."""
    run = setup(cfg, log)
    loaded = load_model(run, log)
    fitting = make_trainer(run, loaded, log)
    result, seconds = fit(run, loaded, fitting, log)
    main = fitting.trainer.is_world_process_zero()
    out = save(run, loaded, fitting, result, seconds, log) if main else run.out
    end_processes(fitting.trainer)
    return out


def end_processes(trainer) -> None:
    """Distributed: every process waits until the main one has written the model, then leaves the process group.
    Why: a process that returned at once, while the main one still saved, sometimes aborted at exit ("terminate
    called without an active exception", SIGABRT: its group's threads torn down live), and the launcher then
    stopped the main process mid-save (seen once in a fresh-clone CI run of the 2-process test)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()


@dataclass
class Run:
    """What `setup` prepared: the data side of the run, fixed before the model loads."""

    cfg: SFTConfig
    data: PreparedData
    base: Path  # the base model's directory
    dtype: object  # the torch dtype the model trains in
    args: object  # TRL's SFTConfig: the trainer's arguments
    out: Path  # where it trains: `cfg.output`, or its staging sibling (`output.run_dir`)
    retriever: Retriever | None
    tok: object
    index: ItemIndex
    builders: dict[str, PromptBuilder]  # one per task, the main task first
    examples: list[dict]
    skipped: int  # rows that could not be rendered within the prompt budget

    @property
    def builder(self) -> PromptBuilder:
        """The main task's."""
        return next(iter(self.builders.values()))


@dataclass
class LoadedModel:
    """What `load_model` readied: the model before any adapter, and what it starts from."""

    model: object
    init: Path | None  # init_from: the genrec model whose adapter this run continues
    new_ids: list[int]  # the new item tokens' ids (item_id=token or semantic)
    grounded_rows: grounded.ItemRows | None  # item_text=grounded


@dataclass
class Fitting:
    """What `make_trainer` put together: the trainer and genrec's callbacks that `fit` and `save` reach into."""

    trainer: object
    code_rows: CodeRows
    clock: Clock | None  # max_minutes
    loss_log: LossLog
    batches: list[list[int]] | None  # token-budget batches, or None: the trainer's own


def setup(cfg: SFTConfig, log=print) -> Run:
    """Everything before the model loads: settings checked, data read, the run's directory made (and its
    retriever trained), the items' identifiers built and every task's examples tokenized."""
    cfg = with_item_text(cfg)
    check_settings(cfg)
    data = load_prepared(cfg.data)
    base = resolve_base_model(cfg.model)
    want_retriever = check_tasks(cfg, data)
    dtype = pick_dtype(cfg.dtype)
    out = run_dir(cfg)  # `output`, or its staging sibling: --overwrite keeps the old model until this one is done
    args = trainer_args(cfg, out, dtype)
    # Distributed runs (accelerate launch): the main process alone prepares the output directory and trains the
    # retriever; the others wait, then read what it wrote. Every process builds the same examples (seeded).
    with args.main_process_first(local=False, desc="the model directory"):
        if args.process_index == 0:
            out = prepare_output(cfg)
            retriever = fit_retriever(cfg, data, out, log) if want_retriever else None
        else:
            retriever = Retriever.load(out) if want_retriever else None
    tok = load_tokenizer(base)
    index = build_index(data, cfg, log)
    if index.new_tokens:
        tok.add_tokens(index.new_tokens)
    builders = task_builders(tok, cfg, data.catalog, index)
    examples, skipped = training_examples(cfg, data, builders, retriever, args.world_size, log)
    return Run(cfg, data, base, dtype, args, out, retriever, tok, index, builders, examples, skipped)


def item_lists(cfg: SFTConfig) -> bool:
    """Whether the loss is the item softmax: one token per item, whole windows (the sequence objective)."""
    objective = OBJECTIVE.get(cfg.objective)  # unknown: refused with the list when the builders are made
    return id_style(cfg.item_id).one_token and objective is not None and objective.per_window


def with_item_text(cfg: SFTConfig) -> SFTConfig:
    """`item_text` unset: grounded rows where the item softmax is the loss (measured best on Scientific, and the
    only rows a new item can get), else the title start; the card records which."""
    if cfg.item_text is not None:
        return cfg
    return dataclasses.replace(cfg, item_text="grounded" if item_lists(cfg) else "init")


def check_settings(cfg: SFTConfig) -> None:
    """The settings that need no data, checked before anything is loaded or written."""
    for name in ("max_minutes", "save_minutes"):
        if getattr(cfg, name) is not None and not getattr(cfg, name) > 0:
            raise GenrecError(f"{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.clock not in CLOCKS:
        raise GenrecError(f"unknown clock {cfg.clock!r} ({', '.join(CLOCKS)})")
    if not 0 <= cfg.label_smoothing < 1:
        raise GenrecError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    objective = OBJECTIVE.get(cfg.objective)
    items = item_lists(cfg)
    if cfg.label_smoothing and not items:
        raise GenrecError(SMOOTHING_SCOPE)
    if cfg.item_weight_decay < 0 or cfg.item_weight_decay and not id_style(cfg.item_id).new_vocabulary:
        raise GenrecError("item_weight_decay must be >= 0 and applies to new item tokens: item_id=token or semantic")
    if cfg.item_text not in grounded.STYLES:
        raise GenrecError(f"unknown item_text {cfg.item_text!r} ({', '.join(grounded.STYLES)})")
    if cfg.item_text == "grounded" and not items:
        raise GenrecError(GROUNDED_SCOPE)
    for share in ("request_share", "reason_share"):
        if getattr(cfg.prompt, share) and (objective is None or not objective.per_window):
            raise GenrecError(f"prompt.{share} writes request lines or reasons into the sequence objective's "
                              "windows: use objective=sequence (other objectives have the request and "
                              "next_item_reason tasks)")
    if not cfg.reason_weight >= 0 or cfg.reason_weight != 1 and not cfg.prompt.reason_share:
        raise GenrecError(f"reason_weight must be >= 0 and applies to prompt.reason_share's reasons, got "
                          f"{cfg.reason_weight}")
    if cfg.residual_dropout is not None and (not 0 <= cfg.residual_dropout < 1 or
                                             cfg.residual_dropout and cfg.item_text != "grounded"):
        raise GenrecError(f"residual_dropout must be in [0, 1) and applies to item_text=grounded, got "
                          f"{cfg.residual_dropout}")
    check_trackers(cfg.report_to)
    if cfg.grad_accum < 1:
        raise GenrecError(f"grad_accum must be >= 1, got {cfg.grad_accum}")


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


def check_tasks(cfg: SFTConfig, data: PreparedData) -> bool:
    """The step budget and the tasks, checked; whether the run needs a retriever."""
    if cfg.max_steps <= 0 and cfg.num_epochs <= 0:
        raise GenrecError("set max_steps > 0 or num_epochs > 0")
    tasks = cfg.tasks or [cfg.prompt.task]
    ranks = any(TASKS.get(t) and TASKS[t].ranks_candidates for t in tasks)  # the rerank task
    want_retriever = cfg.retriever not in (None, "", "none") or ranks
    if ranks and cfg.retriever == "none":
        raise GenrecError("the rerank task ranks a retriever's candidates: it needs retriever=sasrec")
    if not 1 <= cfg.prompt.rerank_candidates <= len(RERANK_LABELS) or cfg.rerank_copies < 1:
        raise GenrecError(f"prompt.rerank_candidates must be 1-{len(RERANK_LABELS)} and rerank_copies >= 1")
    if want_retriever:
        given_retriever(cfg, data)  # a bad retriever=DIR fails before anything is written
    return want_retriever


def trainer_args(cfg: SFTConfig, out: Path, dtype):
    """TRL's training arguments for this run (the prompt masked out of the loss: completion_only_loss; the
    examples come tokenized and are never cut: max_length=None)."""
    import torch
    from trl import SFTConfig as TRLConfig

    return TRLConfig(
        output_dir=str(out), max_steps=cfg.max_steps if cfg.max_steps > 0 else -1, num_train_epochs=cfg.num_epochs,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, optim="adamw_torch", logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=cfg.keep_checkpoints, seed=cfg.seed, data_seed=cfg.seed,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=cfg.activation_checkpointing, completion_only_loss=True, max_length=None,
        report_to=list(cfg.report_to), dataloader_num_workers=0, save_only_model=False, disable_tqdm=False,
        dataset_num_proc=None,
    )


def load_model(run: Run, log=print) -> LoadedModel:
    """The base model cut to `layers`, with embedding dropout; its vocabulary grown by the new item tokens, their
    rows started from the titles or grounded in the item text; init_from's model checked."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg, tok, index = run.cfg, run.tok, run.index
    model = AutoModelForCausalLM.from_pretrained(str(run.base), dtype=run.dtype)
    keep_layers(model, cfg.layers)
    embedding_dropout(model, cfg.embedding_dropout)
    init = init_adapter(cfg, run.base, index)
    new_ids = tok.convert_tokens_to_ids(index.new_tokens) if index.new_tokens else []
    if new_ids:
        if cfg.weight_decay:
            raise GenrecError(f"item_id={index.style} trains new embedding rows directly: set weight_decay=0")
        torch.manual_seed(cfg.seed)
        model.resize_token_embeddings(len(tok))
        if index.rules.one_token and index.stats.get("text"):
            item_rows_from_titles(model, tok, index, run.data.catalog)
    return LoadedModel(model, init, new_ids, ground_items(cfg, model, tok, index, run.data, new_ids, log))


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
    dropout = GROUNDED_RESIDUAL_DROPOUT if cfg.residual_dropout is None else cfg.residual_dropout
    log(f"item_text=grounded: read {len(features)} item texts in {time.time() - t0:.0f}s; residual dropout {dropout:g}")
    import torch

    counts = data.training_counts()
    return grounded.ItemRows(features, ITEM_ROW_SCALE * float(vocab.norm(dim=1).mean()),
                             torch.tensor([counts[i] > 0 for i in index.item_ids]), dropout)


def make_trainer(run: Run, loaded: LoadedModel, log=print) -> Fitting:
    """TRL's SFTTrainer (or its token-batch subclass) over the run's examples, with a new LoRA adapter or
    init_from's continued, genrec's callbacks, and the item softmax as the loss when every target is an item."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    cfg, examples, rows = run.cfg, run.examples, loaded.grounded_rows
    batches = example_batches(cfg, examples, run.builders, log)
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=cfg.lora_target_modules if cfg.lora_target_modules == "all-linear"
                             else [m.strip() for m in cfg.lora_target_modules.split(",")],
                             task_type="CAUSAL_LM")
    loss_log = LossLog(run.out / ModelCard.LOSS_LOG)
    if not cfg.resume and loss_log.path.exists() and run.args.process_index == 0:
        loss_log.path.unlink()
    model = loaded.model
    if loaded.init is not None:  # transfer: continue the given model's adapter (its LoRA settings apply)
        from peft import PeftModel

        log(f"starting from the adapter of {loaded.init}")
        model, peft_config = PeftModel.from_pretrained(model, str(loaded.init), is_trainable=True), None
    code_rows, clock, callbacks = trainer_callbacks(cfg, loaded.new_ids, rows, loss_log, batches, len(examples))
    item_rows = item_softmax_rows(run.index, run.builders, code_rows.span, examples, cfg.label_smoothing,
                                  rows is not None)
    trainer_cls = token_batch_trainer(SFTTrainer) if batches else SFTTrainer
    trainer = trainer_cls(model=model, args=run.args, train_dataset=Dataset.from_list(examples),
                          processing_class=run.tok, peft_config=peft_config, callbacks=callbacks,
                          **({"batches": batches, "item_rows": item_rows, "label_smoothing": cfg.label_smoothing,
                              "item_matrix": rows, "text_weight": cfg.reason_weight} if batches else {}))
    code_rows.attach(trainer.model)
    if rows is not None:  # a submodule: the optimizer (made in train()) takes W, b and the residuals
        trainer.model.add_module("genrec_item_rows", rows)
        grounded.attach(trainer.model, rows, code_rows.span)
    if clock is not None:  # the bar counts the clock's minutes, not the epoch-bound steps
        from transformers.trainer_callback import ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(MinutesBar(clock))
    if item_rows is not None:
        text = (f"; a reason's tokens over the whole vocabulary, weighted {cfg.reason_weight}"
                if cfg.prompt.reason_share else "")
        log(f"loss: the softmax over the {len(item_rows)} item tokens at each supervised item position{text}")
    return Fitting(trainer, code_rows, clock, loss_log, batches)


def fit(run: Run, loaded: LoadedModel, fitting: Fitting, log=print):
    """Train, under --resume from the newest complete checkpoint (genrec's own state of it restored first): the
    trainer's result, and the seconds training took."""
    t0 = fitting.loss_log.start()
    ckpt = last_checkpoint(run.out) if run.cfg.resume else None
    if ckpt is not None:
        log(f"resuming from {ckpt}")
        fitting.code_rows.load(ckpt)
        if loaded.grounded_rows is not None:
            loaded.grounded_rows.load(ckpt / ModelCard.ITEM_TEXT)
        if fitting.clock is not None:
            fitting.clock.load(ckpt)
    result = fitting.trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    return result, time.time() - t0


def save(run: Run, loaded: LoadedModel, fitting: Fitting, result, seconds: float, log=print) -> Path:
    """The model directory: genrec's own state, the files of ModelCard.write_files, then the card, last; a staged
    run's directory then replaces `output`."""
    cfg, out, trainer, retriever = run.cfg, run.out, fitting.trainer, run.retriever
    if loaded.grounded_rows is not None:  # the final rows into the matrices, and W, b, f kept for items added later
        grounded.write_rows(trainer.model, loaded.grounded_rows, fitting.code_rows.span)
        loaded.grounded_rows.save(out / ModelCard.ITEM_TEXT)
    fitting.code_rows.save(out)
    # vLLM's LoRA cannot add vocabulary, and a cut decoder is not the base model: both serve the merged model
    merge = cfg.merge or bool(loaded.new_ids) or cfg.layers is not None
    tasks = write_artefacts(out, trainer.model, run.tok, run.index, run.data, run.builders, merge)
    ModelCard(
        dir=out, base_model="default" if cfg.model in ("default", None, "") else str(run.base.resolve()),
        data=str(Path(cfg.data).resolve()), prompt=next(iter(tasks.values())), tasks=tasks, id_style=run.index.style,
        adapter=True, merged=ModelCard.MERGED if merge else None,
        init_from=str(loaded.init.resolve()) if loaded.init else None,
        retriever={"kind": retriever.settings["kind"], "dir": ModelCard.RETRIEVER, "facts": retriever.facts}
        if retriever is not None else None,
        with_reasons=run.builder.with_reasons, objective=cfg.objective if "next_item" in run.builders else "prefix",
        sft=to_dict(cfg), stats=run_stats(run, fitting, result, seconds)).save()  # last: its presence = "complete"
    out = finish_output(out, Path(cfg.output))
    log(f"model written to {out} ({trainer.state.global_step} steps, {seconds:.0f}s, loss {result.training_loss:.3f})")
    if retriever is not None:
        log(f"it has a retriever: `genrec tune-fusion --model {out}` chooses the hybrid's weight on validation users")
    return out


def run_stats(run: Run, fitting: Fitting, result, seconds: float) -> dict:
    """What training measured, for the card."""
    examples, batches, clock, state = run.examples, fitting.batches, fitting.clock, fitting.trainer.state
    tokens = sum(len(e["input_ids"]) for e in examples)
    return {
        "train_examples": len(examples),
        "target_tokens": sum(sum(e["completion_mask"]) for e in examples),
        "train_tokens": tokens,
        "stopped_by_clock": bool(clock is not None and clock.used() >= clock.budget),
        "train_targets": sum(supervised_items(e, run.builder) for e in examples),  # supervised items in the examples
        # TRL counts the tokens it trained on; given token batches it does not, and their mean size stands in
        "tokens_seen": next((float(r["num_tokens"]) for r in reversed(state.log_history) if "num_tokens" in r), None)
        or (round(tokens / len(batches) * state.global_step) if batches else None),
        "skipped_examples": run.skipped,
        "train_loss": result.training_loss,
        "train_seconds": seconds,  # wall-clock
        "clock_seconds": clock.used() if clock is not None else None,  # what max_minutes counted (SFTConfig.clock)
        "global_step": state.global_step,
        "processes": run.args.world_size,  # a global batch is batch_size x grad_accum x processes examples
        "global_batch": run.cfg.batch_size * run.cfg.grad_accum * run.args.world_size if not batches else None,
    }
