"""The `genrec` command: parses arguments into typed configs and calls library functions. Nothing else."""

from __future__ import annotations

import functools
import json
from pathlib import Path
import sys

import click

from genrec.config import (
    ITEM_TEXT_STYLES,
    DataConfig,
    EvaluateConfig,
    FusionConfig,
    GenerateConfig,
    RankConfig,
    ServeConfig,
    SFTConfig,
)
from genrec.errors import GenrecError
from genrec.items.index import ID_STYLES


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def friendly(fn):
    """Turn known failures into one line on stderr and a documented exit code (2: bad input, 130: interrupted)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GenrecError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; nothing partial was written (rerun with --resume where supported)", 130)
        except MemoryError:
            _fail("out of memory: lower --batch-size or the history/prompt limits", 3)

    return wrapper


# Options of config fields, derived from the config dataclasses: the flag from the field name, the type from its
# annotation (booleans as --x/--no-x pairs), the default shown from its default; the help of a field shared by
# several commands is written once, here.
HELP = {
    "model": "Model directory written by `genrec sft`.",
    "data": "Prepared data for user_id lookup (default: the model's training data; another dataset's: items from "
            "its catalog, title models only).",
    "k": "Recommendations per user.",
    "beam_width": "Beam width (>= k) [max(k, 10)].",
    "search": "beam: beam search of --beam-width; exact: the certified top-K (searched again, wider, until no "
              "pruned prefix could beat the K-th).",
    "max_width": "search=exact: the widest beam it may widen to (default: the catalog size); a user whose top-K is "
                 "not certified by then keeps that beam's items and is marked \"exact\": false.",
    "batch_size": "Users per batch.",
    "backend": "Generation backend.",
    "exclude_seen": "Never recommend items in the history.",
    "with_reasons": "Add a short reason after each item (reason models).",
    "popularity_penalty": "Down-weight popular items: rank by log p - this * log(1 + training count) (0 = off).",
    "candidates": "retriever:K: search only the model's retriever's top K items (then its order); needs a model "
                  "trained with retriever=sasrec. catalog: the whole catalog. [the model's tuned hybrid "
                  "(`genrec tune-fusion`), else catalog]",
    "retriever_weight": "Within candidates: rank by log p_LLM + W x log softmax(retriever scores over the K) "
                        "[the model's tuned W, else 0 (generate) / 1 (evaluate's fused row)].",
    "strict": "Bad lines are errors instead of skipped.",
}
CHOICES = {"backend": ["hf", "vllm"], "search": ["beam", "exact"], "split": ["valid", "test"],
           "objective": ["sequence", "prefix"], "item_id": list(ID_STYLES), "item_text": list(ITEM_TEXT_STYLES)}


def config_options(cls, *fields: str, help: dict | None = None, flags: dict | None = None):
    """Click options for the named fields of config dataclass `cls`; the command gets them as keyword arguments
    named like the fields (None when not given, so the YAML file and the defaults apply)."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}

    def decorate(fn):
        for name in reversed(fields):
            tp = hints[name]
            if typing.get_origin(tp) in (typing.Union, types.UnionType):
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            text = (help or {}).get(name) or HELP[name]
            default = defaults.get(name)
            if default is not None and default is not dataclasses.MISSING and default != "" and "[" not in text:
                text += f" [{'on' if default is True else 'off' if default is False else default}]"
            flag = (flags or {}).get(name) or "--" + name.replace("_", "-")
            if tp is bool:
                decl = flag if "/" in flag else f"{flag}/--no-{flag[2:]}"
                fn = click.option(decl, name, default=None, help=text)(fn)
            else:
                kind = click.Choice(CHOICES[name]) if name in CHOICES else tp if tp in (int, float) else None
                fn = click.option(*flag.split(","), name, type=kind, help=text)(fn)
        return fn

    return decorate


def _overrides(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="genrec")
def main() -> None:
    """genrec: generative recommendation with language models.

    \b
    Typical flow on the embedded MovieLens sample:
      genrec data prepare                       # -> runs/sample/data
      genrec sft --config configs/sft.yaml      # -> runs/sample/model (LoRA adapter + everything to serve it)
      genrec generate --users users.jsonl       # -> constrained top-K items per user (JSONL)
      genrec evaluate                           # -> HR/NDCG/MRR/validity/coverage beside baselines
    """


# ------------------------------------------------------------------------------------------------ data
@main.group()
def data() -> None:
    """Prepare interaction data for training and evaluation."""


@data.command("prepare")
@click.option("--config", "config_path", type=click.Path(), help="YAML file with DataConfig keys.")
@config_options(
    DataConfig, "interactions", "catalog", "output", "user_col", "item_col", "time_col", "rating_col", "title_col",
    "catalog_item_col", "text_cols", "context_cols", "derive_context", "min_user_interactions",
    "min_item_interactions", "max_history", "min_rating", "keep_cold_items", "cold_items", "hash_user_ids",
    "user_id_salt", "strict", "overwrite",
    help={"interactions": "Interactions file (CSV/TSV/JSONL/Parquet, optionally .gz) [embedded sample].",
          "catalog": "Item catalog file (item id, title, other text fields) [embedded sample].",
          "output": "Output directory.",
          "user_col": "User id column (default: detected, e.g. user_id, userId).",
          "item_col": "Item id column in the interactions (default: detected).",
          "time_col": "Timestamp column: unix seconds or dates (default: detected).",
          "rating_col": "Rating column (optional).",
          "title_col": "Title column in the catalog (default: detected; 'none': no titles, ids stand in).",
          "catalog_item_col": "Item id column in the catalog (default: as --item-col or detected).",
          "text_cols": "Comma-separated catalog columns kept as item attributes (default: all others).",
          "context_cols": "Comma-separated interaction columns rendered as context.",
          "derive_context": "Context fields derived from each interaction's timestamp (UTC): time_of_day, "
                            "day_of_week, hour.",
          "min_user_interactions": "k-core: minimum interactions per user (at least 3).",
          "min_item_interactions": "k-core: minimum interactions per item.",
          "max_history": "Keep the most recent N items of each history.",
          "min_rating": "Keep interactions rated at least this (positives only).",
          "keep_cold_items": "Keep catalog items never interacted with.",
          "cold_items": "Cold-item protocol: hold this share of items (seeded) out of training and validation; "
                        "genrec evaluate then reports cold and warm targets apart [0: off].",
          "hash_user_ids": "Replace user ids by salted HMAC-SHA256 pseudonyms before anything is written.",
          "user_id_salt": "Salt for --hash-user-ids [$GENREC_USER_ID_SALT, else random]; never written.",
          "strict": "Fail on interactions naming unknown items instead of dropping.",
          "overwrite": "Replace an existing output directory."},
    flags={"output": "--output,-o"})
@click.argument("overrides", nargs=-1)
@friendly
def data_prepare(config_path, overrides, **opts) -> None:
    """Validate, k-core filter and split (leave-one-out by time) into an HF DatasetDict.

    Extra KEY=VALUE arguments override config keys.
    """
    from genrec.config import load_config, parse_overrides
    from genrec.data.prepare import prepare

    cfg = load_config(DataConfig, config_path, {**parse_overrides(overrides), **_overrides(**opts)})
    prepare(cfg, log=lambda m: click.echo(m, err=True))


# ------------------------------------------------------------------------------------------------ catalog
@main.group()
def catalog() -> None:
    """Change a trained model's catalog."""


@catalog.command("add")
@click.option("--model", required=True, help="An item-token model directory written by `genrec sft`.")
@click.option("--catalog", "catalog_file", required=True, type=click.Path(),
              help="New items (CSV/TSV/JSONL/Parquet): an item id and a title each, plus the catalog's attributes.")
@friendly
def catalog_add(model, catalog_file) -> None:
    """Add items to a trained item-token model without retraining: each gets a token and a row from its text
    (through the grounded map of an item_text=grounded model). The model directory is replaced whole, atomically."""
    from genrec.infer.new_items import add_items

    click.echo(json.dumps(add_items(model, catalog_file, log=lambda m: click.echo(m, err=True))))


# ------------------------------------------------------------------------------------------------ prompts
@main.group()
def prompts() -> None:
    """Inspect prompt templates."""


@prompts.command("show")
@click.option("--data", "data_dir", default="runs/sample/data", show_default=True, help="Prepared data directory.")
@click.option("--user", "user_id", required=True, help="User id whose test example is rendered.")
@click.option("--split", default="test", show_default=True)
@click.option("--task", default="next_item", show_default=True, help="Shipped template name (prompts/<task>.j2).")
@click.option("--template", type=click.Path(), help="Your own Jinja template file.")
@click.option("--model", default="default", show_default=True, help="Model whose tokenizer and chat template apply.")
@friendly
def prompts_show(data_dir, user_id, split, task, template, model) -> None:
    """Print exactly what the model sees for one user (chat-wrapped prompt and the target completion)."""
    from genrec.config import PromptConfig
    from genrec.infer.jobs import show_prompt

    click.echo(show_prompt(data_dir, user_id, split, PromptConfig(task=task, template=template), model))


# ------------------------------------------------------------------------------------------------ sft
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with SFTConfig keys (configs/sft.yaml).")
@config_options(
    SFTConfig, "data", "output", "model", "init_from", "max_steps", "objective", "max_minutes", "item_id",
    "item_text", "layers", "resume", "merge", "overwrite",
    help={"data": "Prepared data directory.", "output": "Output model directory.",
          "model": "Base model: 'default' (packaged SmolLM2-135M-Instruct) or a local directory.",
          "init_from": "Continue the adapter of this genrec model (transfer from another dataset; titles on both "
                       "sides).",
          "max_steps": "Optimizer steps (0: train num_epochs=N epochs instead).",
          "objective": "next_item: sequence = one list per user window, every item a target (the demo's); prefix = "
                       "one prompt per history prefix.",
          "max_minutes": "Stop training after this many minutes; the learning rate follows the clock and the model "
                         "is written as at the end.",
          "item_id": "What the model writes for an item: its title, a random-permutation number, a semantic code "
                     "learned from item text + co-occurrence, or one new token per item (started from its title). "
                     "Generate/evaluate/serve use the model's.",
          "item_text": "item_id=token: init starts each row from its title; grounded builds it from the base "
                       "model's reading of the item's text through a learned map plus a residual, so new items get "
                       "rows (genrec catalog add).",
          "layers": "Keep only the base model's first N decoder layers: cheaper steps, so more of the data per "
                    "CPU-minute (the model is saved merged).",
          "resume": "Continue from the newest complete checkpoint in --output (or of an interrupted --overwrite "
                    "run).",
          "merge": "Also write a merged full model (for vLLM).",
          "overwrite": "Replace the genrec run in --output, once the new model is complete (the old one stays "
                       "loadable until then; a directory genrec did not write is refused)."},
    flags={"output": "--output,-o"})
@click.option("--task", help="Prompt task (template prompts/<task>.j2): next_item, next_item_reason, request, "
                             "preference, rating, rerank (an LLM ranks SASRec's candidates; add retriever=sasrec to "
                             "any other task to keep the retriever); several comma-separated are mixed in one run, "
                             "the first is the main.")
@click.option("--template", type=click.Path(), help="Your own Jinja template (for the main task).")
@click.argument("overrides", nargs=-1)
@friendly
def sft(config_path, task, template, overrides, **opts) -> None:
    """LoRA supervised fine-tuning with TRL on prompt/completion examples.

    Extra KEY=VALUE arguments override config keys, e.g. lora_r=8 prompt.max_history=10.
    Multi-GPU: `accelerate launch -m genrec.cli sft ...` runs the same command distributed.
    """
    from genrec.config import load_config, parse_overrides
    from genrec.train.recipe import train

    tasks = [t.strip() for t in task.split(",") if t.strip()] if task else None
    cfg = load_config(SFTConfig, config_path, {
        **parse_overrides(overrides),
        **_overrides(**opts, tasks=tasks, **{"prompt.task": tasks[0] if tasks else None, "prompt.template": template})})
    train(cfg)


# ------------------------------------------------------------------------------------------------ generate
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with GenerateConfig keys.")
@config_options(GenerateConfig, "model", "users", "out", "data", "k", "beam_width", "search", "max_width", "batch_size",
                "backend",
                "exclude_seen", "with_reasons", "popularity_penalty", "strict", "resume", "overwrite", "candidates",
                "retriever_weight", "shard",
                help={"users": "Users file: JSONL (or CSV) with user_id and/or history, optional context, request.",
                      "out": "Output JSONL.", "strict": "Unknown users/items are errors instead of skipped.",
                      "resume": "Keep users already in --out (or its unfinished .partial) and generate the rest.",
                      "overwrite": "Replace an existing --out (without it, or --resume, an existing file is refused).",
                      "shard": "I/N: only this process's 1/N of the users file (lines n with (n-1) % N == I); join "
                               "the N outputs with `genrec merge-shards`."},
                flags={"exclude_seen": "--exclude-seen/--include-seen", "with_reasons": "--with-reasons/--no-reasons"})
@click.argument("overrides", nargs=-1)
@friendly
def generate(config_path, overrides, **opts) -> None:
    """Top-K recommendations per user, constrained to valid catalog items."""
    from genrec.config import load_config, parse_overrides
    from genrec.infer.jobs import generate_file

    cfg = load_config(GenerateConfig, config_path, {**parse_overrides(overrides), **_overrides(**opts)})
    if not cfg.users:
        raise GenrecError("--users FILE is required")
    summary = generate_file(cfg)
    click.echo(json.dumps(summary), err=True)


# ------------------------------------------------------------------------------------------------ rank
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with RankConfig keys.")
@config_options(RankConfig, "model", "candidates", "out", "data", "batch_size", "backend", "strict",
                help={"model": "Preference, rating or rerank model (`genrec sft --task preference|rating|rerank`).",
                      "candidates": "JSONL: user_id and/or history, and candidates (a list of item ids) per line.",
                      "out": "Output JSONL: each line's candidates ranked (P(yes), expected rating or P(label))."})
@click.argument("overrides", nargs=-1)
@friendly
def rank(config_path, overrides, **opts) -> None:
    """Re-rank candidate items per user by P(yes) from a preference model's yes/no logits, the expected rating of a
    rating model, or a rerank model's P(label) over the candidates shown together."""
    from genrec.config import load_config, parse_overrides
    from genrec.infer.jobs import rank_file

    cfg = load_config(RankConfig, config_path, {**parse_overrides(overrides), **_overrides(**opts)})
    if not cfg.candidates:
        raise GenrecError("--candidates FILE is required")
    click.echo(json.dumps(rank_file(cfg)), err=True)


@main.command()
@click.option("--model", required=True, help="Model directory written by `genrec sft`.")
@click.option("--user", "user_id", help="A user of the model's data (its history is looked up).")
@click.option("--history", "history", multiple=True, help="A history item, by id or title (repeat, oldest first).")
@click.option("--request", "request_text", help="A natural-language request (request models).")
@click.option("--k", type=int, default=10, show_default=True, help="How many items.")
@click.option("--with-reasons/--no-reasons", default=False, help="A short reason after each item (reason models).")
@config_options(GenerateConfig, "data", "backend")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON line `generate` writes instead of a table.")
@friendly
def recommend(model, user_id, history, request_text, k, with_reasons, data, backend, as_json) -> None:
    """One user's recommendations at the terminal: the same Recommender and constraints as `generate`."""
    from genrec.infer.jobs import load_for_data, output_settings, to_request
    from genrec.infer.recommender import Search

    obj = {key: v for key, v in {"user_id": user_id, "history": list(history) or None,
                                  "request": request_text}.items() if v}
    if not obj:
        raise GenrecError("give --user, --history or --request")
    cfg = GenerateConfig(model=model, data=data, backend=backend or "hf", k=k, with_reasons=with_reasons)
    rec = load_for_data(cfg, log=lambda m: click.echo(m, err=True))
    users = rec.known_users(data) if user_id and not history else None
    req = to_request(obj, users, rec.catalog, "recommend")
    res = rec.recommend([req], Search.of(cfg))[0]
    if as_json:
        click.echo(json.dumps({"index": 1, "user_id": user_id, **res, "settings": output_settings(cfg)},
                              ensure_ascii=False))
        return
    if req.history:
        shown = req.history[-5:]
        click.echo(f"history ({len(req.history)} items, the last {len(shown)}):")
        for i in shown:
            click.echo(f"  - {rec.catalog[i]['title']}")
    if req.text:
        click.echo(f"request: {req.text}")
    click.echo()
    _echo_recommendations(res)


def _echo_recommendations(res: dict, k: int | None = None) -> None:
    """A user's list as the terminal shows it: rank, score, title, and the reason under it where there is one."""
    click.echo(f"{'rank':>4}  {'score':>8}  title" + ("  (popular fallback)" if res.get("fallback") else ""))
    for r in res["recommendations"][:k]:
        score = "" if r.get("score") is None else f"{r['score']:.3f}"
        click.echo(f"{r.get('rank', ''):>4}  {score:>8}  {r.get('title') or r.get('item_id')}")
        if r.get("reason"):
            click.echo(f"{'':>16}{r['reason']}")


@main.command()
@click.argument("recommendations", type=click.Path())
@click.option("--users", "n_users", type=int, default=3, show_default=True, help="How many users to show.")
@click.option("--k", type=int, default=5, show_default=True, help="Items shown per user.")
@friendly
def show(recommendations, n_users, k) -> None:
    """Print the first users of a `genrec generate` output file as short tables (titles, and reasons where the
    model gives them)."""
    from genrec.infer.jobs import finished_lines

    path = Path(recommendations)
    if not path.is_file():
        raise GenrecError(f"{path} does not exist")
    lines = finished_lines([path])
    if not lines:
        raise GenrecError(f"{path} holds no `genrec generate` output lines")
    for line in list(lines.values())[:max(n_users, 0)]:
        obj = json.loads(line)
        who = f"user {obj['user_id']}" if obj.get("user_id") is not None else f"line {obj['index']} (a history)"
        click.echo(f"{who}:")
        _echo_recommendations(obj, k)
        click.echo()


@main.command("merge-shards")
@click.argument("parts", nargs=-1, required=True)
@click.option("--out", required=True, help="The joined JSONL, ordered by users-file line.")
@friendly
def merge_shards_cmd(parts, out) -> None:
    """Join the outputs of `genrec generate --shard I/N` (any order) into one file."""
    from genrec.infer.jobs import merge_shards

    click.echo(json.dumps({"written": merge_shards(list(parts), out), "out": out}), err=True)


# ------------------------------------------------------------------------------------------------ evaluate
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with EvaluateConfig keys.")
@config_options(EvaluateConfig, "model", "data", "split", "task", "ks", "max_users", "backend", "batch_size",
                "baselines", "perturb", "popularity_penalty", "with_reasons", "candidates", "retriever_weight", "search",
                "max_width", "output",
                help={"data": "Prepared data (default: the model's training data; another dataset's: zero-shot "
                              "transfer to its catalog, title models only).",
                      "split": "Split to evaluate.",
                      "task": "Task of a multi-task model to measure [its main task]: next_item, request (cold-start "
                              "users), preference (AUC), rating (RMSE/MAE), rerank.",
                      "ks": "Comma-separated cutoffs [1,5,10,20].",
                      "max_users": "Evaluate N users drawn at random with --seed (the same N users on every run and "
                                   "model) [all].",
                      "baselines": "Comma-separated: popular,sasrec,content (MiniLM text similarity; added for data "
                                   "prepared with --cold-items), or 'none' [popular,sasrec].",
                      "perturb": "Also evaluate noisy histories: insert:0.2, drop:0.2 or shuffle (reports the drop).",
                      "with_reasons": "Reason models: measure how often reasons name non-catalog titles or "
                                      "unsupported attributes.",
                      "output": "Report directory [<model>/eval-<split>]."},
                flags={"ks": "--k", "output": "--output,-o", "with_reasons": "--with-reasons/--no-reasons"})
@click.argument("overrides", nargs=-1)
@friendly
def evaluate(config_path, overrides, **opts) -> None:
    """Full-ranking HR@K, NDCG@K, MRR, validity and coverage, beside most-popular and SASRec."""
    from genrec.config import load_config, parse_overrides
    from genrec.eval.protocol import run_evaluation

    if opts.get("baselines") == "none":
        opts["baselines"] = []
    cfg = load_config(EvaluateConfig, config_path, {**parse_overrides(overrides), **_overrides(**opts)})
    report = run_evaluation(cfg)
    if not report.get("intervals_markdown"):  # scoring tasks (preference, rating): their one table
        click.echo(report["markdown"])
        return
    # the columns that matter, with intervals; every metric at every K stays in metrics.md
    click.echo(report["intervals_markdown"])
    if report.get("sasrec") and report["sasrec"]["capped"]:
        click.echo(f"SASRec ({report['sasrec']['source']}) was capped by its time limit ({report['sasrec']['epochs']} "
                   "epochs): a budget baseline, not a converged one.")
    k = report["main_k"]
    click.echo(f"HR@{k} is the share of users whose held-out next item is among the {k} recommended out of all "
               f"{report['catalog_items']:,} catalog items; NDCG@{k} also rewards ranking it higher (1 at the top).")
    click.echo(report["verdict"])
    click.echo(f"All metrics, slices and per-user lists: {report['output']}/metrics.md")


@main.command("tune-fusion")
@click.option("--config", "config_path", type=click.Path(), help="YAML file with FusionConfig keys.")
@config_options(FusionConfig, "model", "candidates", "weights", "max_users", "batch_size", "backend",
                help={"candidates": "retriever:K: the K a generative model searches within, or retriever:K1,K2,... to "
                                    "choose K too (a rerank model has its own K).",
                      "weights": "Comma-separated retriever weights to try [0,0.25,0.5,1,2,4,8,16].",
                      "max_users": "Validation users, a seeded random sample [2000]."})
@click.argument("overrides", nargs=-1)
@friendly
def tune_fusion(config_path, overrides, **opts) -> None:
    """Choose the hybrid's retriever weight (and K) on validation users; generate, evaluate and serve then use it.

    Scores every user's K candidates once (the LLM and the model's retriever), ranks them by
    log p_LLM + W x log softmax(retriever) for each W (and each K given), keeps the best NDCG@10 in
    <model>/fusion.json.
    """
    from genrec.config import load_config, parse_overrides
    from genrec.eval.protocol import tune_fusion as run_tuning

    cfg = load_config(FusionConfig, config_path, {**parse_overrides(overrides), **_overrides(**opts)})
    click.echo(json.dumps({k: v for k, v in run_tuning(cfg).items() if k != "table"}))


# ------------------------------------------------------------------------------------------------ serve
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with ServeConfig keys.")
@config_options(ServeConfig, "model", "host", "port", "backend", "served_model_name", "api_key",
                help={"host": "Address to bind.", "port": "Port.",
                      "served_model_name": "Model name clients send [the model directory's name].",
                      "api_key": "Require `Authorization: Bearer KEY` on every route but /health and the page "
                                 "[$GENREC_API_KEY]."})
@click.argument("overrides", nargs=-1)
@friendly
def serve(config_path, overrides, **opts) -> None:
    """OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions, /v1/recommendations, and a page
    at / to try the model.

    Completions name only catalog items (constrained search); extra KEY=VALUE arguments set limits, e.g.
    max_history=100 timeout_s=60 max_body_bytes=65536 max_queue=64. POST bodies must be JSON
    (Content-Type: application/json) and the Host header must name this server: add names a proxy or DNS gives it
    with allowed_hosts=recs.example.com.
    """
    from genrec.config import load_config, parse_overrides
    from genrec.serve.app import serve as run_server

    cfg = load_config(ServeConfig, config_path, {**parse_overrides(overrides), **_overrides(**opts)})
    run_server(cfg, log=lambda m: click.echo(m, err=True))


if __name__ == "__main__":
    main()
