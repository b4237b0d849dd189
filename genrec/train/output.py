"""The run's directory: where a run trains (`run_dir`: `output`, or a staging sibling that replaces it only once
the new model is complete), checked and made (`prepare_output`), what the run starts from (`init_adapter`, the
retriever), and what is written into it at the end (`write_artefacts`, `finish_output`). Which file is which:
genrec.model_dir, the one owner of the layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from genrec.config import SFTConfig, to_dict
from genrec.data.prepared import PreparedData
from genrec.errors import GenrecError
from genrec.files import atomic_file, replace_dir
from genrec.infer.retriever import KINDS as RETRIEVERS
from genrec.infer.retriever import Retriever
from genrec.items.index import ItemIndex, id_style
from genrec.model_dir import ModelCard, is_run, last_checkpoint
from genrec.prompts.builder import PromptBuilder


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


def prepare_output(cfg: SFTConfig) -> Path:
    """Check `output` and make the run's directory (`run_dir`). Nothing is deleted here but a stale staging
    directory of an earlier --overwrite run: the old model stays until the new one is complete (`finish_output`),
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
        raise GenrecError(f"--overwrite: {out} holds no genrec run (no {ModelCard.CARD}, checkpoint or "
                          f"{ModelCard.LOSS_LOG}): refusing to delete it; choose another --output")
    if work.exists():
        if any(work.iterdir()) and not is_run(work):
            raise GenrecError(f"--overwrite: {work} is in the way and holds no genrec run: move it")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


def init_adapter(cfg: SFTConfig, base: Path, index: ItemIndex) -> Path | None:
    """The genrec model whose LoRA adapter this run continues (cross-domain transfer), checked to fit: same base
    model, titles on both sides (ids and codes name items of one catalog only)."""
    if not cfg.init_from:
        return None
    init = Path(cfg.init_from)
    try:
        card = ModelCard.load(init)
    except GenrecError as exc:
        raise GenrecError(f"init_from: {exc}") from None
    if not id_style(card.id_style).writes_words or not index.rules.writes_words:
        raise GenrecError("init_from: transfer between datasets needs item_id=title on both models "
                          "(ids and semantic codes only name items of the catalog they were built on)")
    if cfg.layers is not None or card.sft.get("layers") is not None:
        raise GenrecError("init_from: transfer continues an adapter of the whole base model (leave layers unset on "
                          "both models)")
    if not card.adapter or not (init / ModelCard.ADAPTER_CONFIG).is_file():
        raise GenrecError(f"init_from: {init} holds no LoRA adapter")
    if card.base_path().resolve() != base.resolve():
        raise GenrecError(f"init_from: {init} was trained on another base model ({card.base_model})")
    return init


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
            log(f"retriever: reusing {out / ModelCard.RETRIEVER}")
            return found
    log("retriever: training sasrec on the training part of every sequence")
    r = Retriever.train(data, seed=cfg.seed, max_seconds=cfg.retriever_seconds, log=log)
    r.save(out)
    return r


def write_artefacts(out: Path, model, tok, index: ItemIndex, data: PreparedData, builders: dict[str, PromptBuilder],
                    merge: bool) -> dict[str, dict]:
    """The model directory's files but its card (ModelCard.write_files), and the loss plot."""
    tasks = ModelCard.write_files(out, model, tok, index, list(data.catalog.values()),
                                  dict(data.training_counts().most_common()),
                                  {t: (b.template.path, to_dict(b.cfg)) for t, b in builders.items()}, merge)
    if (out / ModelCard.LOSS_LOG).exists():
        plot_loss(out / ModelCard.LOSS_LOG, out / ModelCard.LOSS_PLOT)
    return tasks


def plot_loss(log_path: Path, png_path: Path) -> None:
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


def finish_output(out: Path, final: Path) -> Path:
    """Where the complete model now lives: a staged run's directory (--overwrite, or --resume of one) replaces
    `final` whole, and its README is rewritten there."""
    if out != final:
        replace_dir(out, final)
        ModelCard.load(final).write_readme()  # its commands name the directory the model now lives in
    return final
