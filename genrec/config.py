"""Typed configurations, one dataclass per command, loaded from YAML plus `key=value` overrides.

The CLI only parses arguments into these; library functions take them as their single source of settings.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from genrec.errors import GenrecError

SAMPLE_DIR = Path(__file__).parent / "sample_data" / "movielens"


@dataclass
class DataConfig:
    """`genrec data prepare`: raw interactions + catalog -> a prepared dataset directory."""

    interactions: str = str(SAMPLE_DIR / "ratings.csv.gz")
    catalog: str = str(SAMPLE_DIR / "movies.csv.gz")
    output: str = "runs/sample/data"
    # Column names; None means "detect from common names" (user_id/userId/user, ...).
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    # "auto": detected from common names; "none": the catalog has no titles (item ids stand in; no item text). A
    # plain str, not Optional: the config reader turns "none" into None for Optional keys, which would mean "detect"
    title_col: str = "auto"
    catalog_item_col: str | None = None
    text_cols: list[str] | None = None  # extra catalog text fields kept for prompts; None = every other column
    context_cols: list[str] = field(default_factory=list)  # interaction columns rendered as context
    derive_context: list[str] = field(default_factory=list)  # from timestamps: time_of_day, day_of_week, hour
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    max_history: int = 50
    min_rating: float | None = None
    keep_cold_items: bool = False
    # the cold-item protocol: this share of items (seeded) loses every interaction in the training and validation
    # parts and stays in the catalog; a test user whose target is one of them measures recommending unseen items
    cold_items: float = 0.0
    hash_user_ids: bool = False  # replace user ids by salted HMAC pseudonyms before anything is written
    user_id_salt: str | None = None  # default: $GENREC_USER_ID_SALT, else random (never written)
    # Equal timestamps: "shuffle" orders them by a seeded random permutation (file order can be item-id order, as
    # in ml-latest-small, which would pick the held-out item by id); "file" keeps the file's row order.
    tie_order: str = "shuffle"
    seed: int = 42
    strict: bool = False
    overwrite: bool = False


@dataclass
class PromptConfig:
    """How a user's history becomes a prompt; shared by training, generation and serving."""

    task: str = "next_item"
    template: str | None = None  # path to a Jinja file; None = prompts/<task>.j2 (sequence objective: sequence.j2)
    # prefix: one prompt per history prefix, the loss on its answer; sequence: one list per user window, the loss
    # on every item (next_item only; see sequence.py). Set by `genrec sft objective=...`.
    objective: str = "prefix"
    max_sequence_tokens: int = 1024  # sequence objective: tokens per training window and per inference prompt
    max_history: int = 50
    max_prompt_tokens: int = 384
    max_title_chars: int = 120
    item_facts: list[str] | None = None  # catalog attributes shown as facts beside items; None = all kept, [] = none
    with_reasons: bool = False
    max_reason_tokens: int = 40
    rerank_candidates: int = 20  # rerank task: the retriever's top K shown under labels A, B, ... (at most 26)
    # wrap prompts in the model's chat template; False: the system and user text alone, one line each. None: on,
    # except for item_id=token (lists of new tokens, where the frame would be most of a short user's window)
    chat_frame: bool | None = None


@dataclass
class VLLMConfig:
    """vLLM engine settings, handed to `vllm.LLM` unchanged (None: vLLM's own default). Scale-out lives in vLLM:
    tensor_parallel_size splits one model over GPUs, data_parallel_size runs replicas."""

    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85  # GPUs only (vLLM-CPU sizes its KV cache by VLLM_CPU_KVCACHE_SPACE)
    max_num_seqs: int | None = None
    enforce_eager: bool | None = None  # None: eager on CPU (compiling costs minutes there), vLLM's default on GPUs


ITEM_TEXT_STYLES = ("init", "grounded")  # SFTConfig.item_text (grounded.py builds the rows)


@dataclass
class SFTConfig:
    """`genrec sft`: LoRA supervised fine-tuning with TRL.

    The defaults are the best measured recipe for next-item recommendation (docs/guide.md, "Where the defaults come
    from"): item tokens under the sequence objective, on the base model's first 10 decoder layers, with embedding
    dropout and weight decay on the item rows, for 30 CPU-minutes. `genrec sft --data D` trains exactly that."""

    data: str = "runs/sample/data"
    output: str = "runs/sample/model"
    model: str = "default"
    # SASRec's history of 50 items, no facts after each item token (a list of item tokens is the whole prompt)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(max_history=50, item_facts=[]))
    tasks: list[str] = field(default_factory=list)  # several tasks in one run, e.g. next_item,preference; [] = prompt.task
    objective: str = "sequence"  # next_item: sequence (every item of a user window is a target) | prefix
    # sequence objective and rerank task: padded tokens per batch (grouped by length) instead of batch_size; on 2 CPU cores
    # 1024 trains fastest per token (150 tokens/s, 4 GB peak RSS; 4096 runs at ~80 tokens/s and 8-14 GB)
    max_batch_tokens: int = 1024
    max_minutes: float | None = 30.0  # stop training after this many minutes (the LR schedule follows the clock)
    report_to: list[str] = field(default_factory=list)  # TRL/transformers trackers, e.g. tensorboard
    init_from: str | None = None  # a genrec model whose adapter this run continues (cross-domain transfer)
    # a collaborative retriever trained with the model and saved inside it (the rerank task needs one; any other
    # task can use it through `--candidates retriever:K`): sasrec | none | DIR (reuse one trained before)
    retriever: str | None = None
    retriever_seconds: float | None = None  # a cap on the retriever's training (None: until early stopping)
    rerank_copies: int = 8  # rerank task: examples per user's validation item, each with its own candidate order
    # keep only the first N decoder layers of the base model (None: all). A shallower model takes more steps per
    # CPU-minute; the model is then saved merged, with N layers in its config
    layers: int | None = 10
    item_id: str = "token"  # what the model writes for an item: title | id | semantic | token (see index.py)
    # item_id=token: how an item's row is made. init: it starts as its title's mean token embedding and is trained
    # like an ID embedding; grounded: W f(item) + b + a residual, f the base model's reading of the item's text
    # (grounded.py), so items training never saw get rows from their text (genrec catalog add)
    item_text: str = "init"
    semantic_levels: int = 3  # code length before collision disambiguation
    semantic_codebook: int = 256  # codes per level (capped at the catalog size)
    semantic_text_weight: float = 0.5  # share of the text embedding vs the co-occurrence embedding
    align_examples: float = 0.0  # semantic/id: extra code->title and title->code examples, as a share of the data
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # 0: PEFT skips the dropout copy of every adapted input (~25% faster on CPU)
    lora_target_modules: str = "all-linear"
    # dropout on every input embedding while training (SASRec drops 0.2-0.5 of its embeddings): against memorising
    # the training windows, which item tokens on a cut decoder do after ~15 CPU-minutes on Scientific
    embedding_dropout: float = 0.3
    # item_id=token's item softmax: this share of each target's probability is spread over the whole catalog (a
    # regulariser against the confident memorised targets that stop validation gains; 0 = off)
    label_smoothing: float = 0.0
    # decoupled weight decay (AdamW's) on the new item/code token rows alone, which weight_decay cannot reach: their
    # embedding matrix holds the base vocabulary too. Each step scales them by 1 - lr x this, lr being the
    # scheduler's rate (under max_minutes, the epoch-bound schedule's, which anneals later than the clock's); 0 = off
    item_weight_decay: float = 2.0
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 0  # 0: bounded by max_minutes and num_epochs
    num_epochs: float = 100.0  # an upper bound: under max_minutes the clock stops the run first
    max_train_examples: int | None = None
    save_steps: int = 50
    keep_checkpoints: int = 2  # the newest checkpoints kept (more: a learning curve can be measured afterwards)
    save_minutes: float | None = None  # also checkpoint every this many training minutes (a curve over a time budget)
    logging_steps: int = 5
    seed: int = 42
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPUs that support it
    activation_checkpointing: bool = False
    merge: bool = False
    resume: bool = False
    overwrite: bool = False


@dataclass
class GenerateConfig:
    """`genrec generate`: constrained top-K recommendations for a users file."""

    model: str = "runs/sample/model"
    users: str = ""
    out: str = "runs/sample/recommendations.jsonl"
    data: str | None = None  # prepared data for user_id lookup; default: the one the model was trained on
    k: int = 10
    beam_width: int | None = None  # default: max(k, 10)
    search: str = "beam"  # beam | exact (the certified top-K: widened until no pruned prefix could beat it)
    max_width: int | None = None  # search=exact: the widest beam it widens to (default: the catalog size)
    batch_size: int = 8
    backend: str = "hf"
    exclude_seen: bool = True
    with_reasons: bool = False
    popularity_penalty: float = 0.0  # rank by log p(item) - this * log(1 + training count); 0 = off
    strict: bool = False
    resume: bool = False  # keep the users already in `out` (or its .partial file) and generate the rest
    overwrite: bool = False  # replace an existing `out`; without it (or resume) an existing `out` is refused
    shard: str | None = None  # "I/N": only users-file lines n with (n - 1) % N == I (N processes split one job)
    # "retriever:K": generate within the model's retriever's top K; "catalog": the whole catalog; None: the model's
    # tuned hybrid (fusion.json) if it has one, else the whole catalog
    candidates: str | None = None
    retriever_weight: float | None = None  # within candidates: + w * log softmax(retriever); None: the tuned w, else 0
    dtype: str = "auto"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # backend=vllm only


@dataclass
class FusionConfig:
    """`genrec tune-fusion`: choose the hybrid's retriever weight (and K) on validation users, kept in the model."""

    model: str = "runs/sample/model"
    # a generative model's K, or several to choose among ("retriever:10,20,50"); a rerank model has its own K
    candidates: str | None = "retriever:20"
    weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    max_users: int | None = 2000  # a seeded sample of the validation split (None: all)
    batch_size: int = 8
    seed: int = 42
    backend: str = "hf"
    dtype: str = "auto"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # backend=vllm only


@dataclass
class RankConfig:
    """`genrec rank`: re-rank given candidate items per user by P(yes) of a preference model."""

    model: str = "runs/sample/preference"
    candidates: str = ""
    out: str = "runs/sample/ranked.jsonl"
    data: str | None = None  # prepared data for user_id lookup; default: the model's training data
    batch_size: int = 8
    backend: str = "hf"
    strict: bool = False
    dtype: str = "auto"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # backend=vllm only


@dataclass
class EvaluateConfig:
    """`genrec evaluate`: full-ranking leave-one-out metrics beside baselines."""

    model: str = "runs/sample/model"
    data: str | None = None
    split: str = "test"
    task: str | None = None  # which task of a (multi-task) model to measure; default: its main task
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    max_users: int | None = None
    batch_size: int = 8
    beam_width: int | None = None
    search: str = "beam"  # beam | exact (as in GenerateConfig)
    max_width: int | None = None  # search=exact: the widest beam (as in GenerateConfig)
    exclude_seen: bool = True
    baselines: list[str] = field(default_factory=lambda: ["popular", "sasrec"])
    sasrec_seconds: float | None = None  # a cap on SASRec's training time (None: until early stopping converges)
    sasrec_dropout: float | None = None  # None: 0.5 on sparse data (mean sequence < 20 items), else 0.2
    popularity_penalty: float = 0.0  # as in GenerateConfig (applies to the genrec model only)
    with_reasons: bool = False  # reason models: also measure how grounded the top-1 reasons are
    negatives: int = 4  # preference models: sampled non-interacted items per held-out item (AUC, log-loss)
    perturb: str | None = None  # noisy histories: insert:0.2 | drop:0.2 | shuffle (reports the drop per model)
    candidates: str | None = None  # as in GenerateConfig; the hybrid is shown beside its LLM alone and retriever alone
    retriever_weight: float | None = None  # the hybrid row's w; None: the model's tuned w, else 1 (fixed in advance)
    output: str | None = None  # default: <model>/eval-<split>
    adapter: str | None = None  # a checkpoint-N of the model's run to evaluate instead of its final adapter
    seed: int = 42
    backend: str = "hf"
    dtype: str = "auto"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # backend=vllm only


@dataclass
class ServeConfig:
    """`genrec serve`: the OpenAI-compatible HTTP API over a genrec model."""

    model: str = "runs/sample/model"
    host: str = "127.0.0.1"  # loopback unless asked otherwise
    port: int = 8000
    backend: str = "hf"
    dtype: str = "auto"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # backend=vllm only
    served_model_name: str | None = None  # default: the model directory's name
    max_batch_size: int = 8  # requests joined into one search
    max_history: int = 200  # items per request
    max_request_chars: int = 2000
    max_k: int = 100
    max_body_bytes: int = 1 << 20
    timeout_s: float = 300.0
    max_queue: int = 64  # requests waiting for the model; beyond it a request is refused with 503 + Retry-After
    api_key: str | None = None  # require `Authorization: Bearer <key>` on every route but /health ($GENREC_API_KEY)
    # Host header names accepted besides the bound address (and, on loopback, localhost/127.0.0.1/::1): the name a
    # proxy or DNS gives this server. Others are refused (DNS rebinding); bound to 0.0.0.0 with none, any is taken
    allowed_hosts: list[str] = field(default_factory=list)


C = TypeVar("C")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, with a one-line error naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if isinstance(value, str) and value == "" and typing.get_origin(args[0]) is list:
            return []  # `prompt.item_facts=`: an empty list, as docs/guide.md says; none/null mean None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise GenrecError(f"config key '{key}' must be a mapping")
        return _from_dict(tp, value, prefix=f"{key}.")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise GenrecError(f"config key '{key}' must be a list")
        return [_coerce(v, inner, key) for v in value]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return tp(value)
    except (TypeError, ValueError):
        raise GenrecError(f"config key '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}") from None


def _from_dict(cls: type[C], data: dict, prefix: str = "") -> C:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise GenrecError(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults <- YAML file <- overrides (dotted keys such as `prompt.max_history=10`)."""
    data: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise GenrecError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise GenrecError(f"config file {path}{where} is not valid YAML") from None
        if not isinstance(data, dict):
            raise GenrecError(f"config file {path} must contain a mapping of keys to values")
    return _from_dict(cls, _overridden(data, overrides))


def with_overrides(cfg: C, overrides: dict[str, Any]) -> C:
    """A copy of `cfg` with dotted `key=value` overrides, checked and typed as load_config does."""
    return _from_dict(type(cfg), _overridden(to_dict(cfg), overrides))


def _overridden(data: dict, overrides: dict[str, Any] | None) -> dict:
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise GenrecError(f"config key '{key}' is not a nested mapping")
        node[last] = value
    return data


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise GenrecError(f"expected key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = v
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
