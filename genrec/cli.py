"""The `genrec` command: parses arguments into typed configs and calls library functions. Nothing else."""

from __future__ import annotations

import functools
import json
from pathlib import Path
import sys

import click

from genrec.config import (
    DataConfig,
    EvaluateConfig,
    FusionConfig,
    GenerateConfig,
    PromptConfig,
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


def config_options(cls, *fields: str, flags: dict | None = None, choices: dict | None = None,
                   required: tuple[str, ...] = ()):
    """Click options for the named fields of config dataclass `cls`, derived from the fields: the flag from the name
    (`flags` renames), the type from the annotation (booleans as --x/--no-x pairs), the help and the accepted names
    from the field's metadata (config.opt; `choices` attaches names owned outside genrec.config), the default shown
    from its default. The command gets them as keyword arguments named like the fields (None when not given, so the
    YAML file and the defaults apply)."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    declared = {f.name: f for f in dataclasses.fields(cls)}

    def decorate(fn):
        for name in reversed(fields):
            tp = hints[name]
            if typing.get_origin(tp) in (typing.Union, types.UnionType):
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            if "help" not in declared[name].metadata:
                raise TypeError(f"{cls.__name__}.{name} has no help: declare it with config.opt(..., help=...)")
            text = declared[name].metadata["help"]
            default = declared[name].default
            if (default is not None and default is not dataclasses.MISSING and default != "" and "[" not in text
                    and name not in required):
                text += f" [{'on' if default is True else 'off' if default is False else default}]"
            flag = (flags or {}).get(name) or "--" + name.replace("_", "-")
            if tp is bool:
                decl = flag if "/" in flag else f"{flag}/--no-{flag[2:]}"
                fn = click.option(decl, name, default=None, help=text)(fn)
            else:
                names = (choices or {}).get(name) or declared[name].metadata.get("choices")
                kind = click.Choice(list(names)) if names else tp if tp in (int, float) else None
                fn = click.option(*flag.split(","), name, type=kind, required=name in required, help=text)(fn)
        return fn

    return decorate


def config_file(cls, example: str | None = None):
    """The --config option of a command whose settings are config dataclass `cls`."""
    return click.option("--config", "config_path", type=click.Path(),
                        help=f"YAML file with {cls.__name__} keys" + (f" ({example})" if example else "") + ".")


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
@config_file(DataConfig)
@config_options(
    DataConfig, "interactions", "catalog", "output", "user_col", "item_col", "time_col", "rating_col", "title_col",
    "catalog_item_col", "text_cols", "context_cols", "derive_context", "min_user_interactions",
    "min_item_interactions", "max_history", "min_rating", "keep_cold_items", "cold_items", "hash_user_ids",
    "user_id_salt", "strict", "overwrite", flags={"output": "--output,-o"})
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
@config_options(PromptConfig, "task", "template")
@click.option("--model", default="default", show_default=True, help="Model whose tokenizer and chat template apply.")
@friendly
def prompts_show(data_dir, user_id, split, task, template, model) -> None:
    """Print exactly what the model sees for one user (chat-wrapped prompt and the target completion)."""
    from genrec.infer.jobs import show_prompt

    click.echo(show_prompt(data_dir, user_id, split, PromptConfig(**_overrides(task=task, template=template)), model))


# ------------------------------------------------------------------------------------------------ sft
@main.command()
@config_file(SFTConfig, "configs/sft.yaml")
@config_options(
    SFTConfig, "data", "output", "model", "init_from", "max_steps", "objective", "max_minutes", "item_id",
    "item_text", "layers", "resume", "merge", "overwrite", "tasks",
    flags={"output": "--output,-o", "tasks": "--task"}, choices={"item_id": ID_STYLES})
@config_options(PromptConfig, "template")
@click.argument("overrides", nargs=-1)
@friendly
def sft(config_path, template, overrides, **opts) -> None:
    """LoRA supervised fine-tuning with TRL on prompt/completion examples.

    Extra KEY=VALUE arguments override config keys, e.g. lora_r=8 prompt.max_history=10.
    Multi-GPU: `accelerate launch -m genrec.cli sft ...` runs the same command distributed.
    """
    from genrec.config import load_config, parse_overrides
    from genrec.train.recipe import train

    task = opts.pop("tasks")
    tasks = [t.strip() for t in task.split(",") if t.strip()] if task else None
    cfg = load_config(SFTConfig, config_path, {
        **parse_overrides(overrides),
        **_overrides(**opts, tasks=tasks, **{"prompt.task": tasks[0] if tasks else None, "prompt.template": template})})
    train(cfg)


# ------------------------------------------------------------------------------------------------ generate
@main.command()
@config_file(GenerateConfig)
@config_options(GenerateConfig, "model", "users", "out", "data", "k", "beam_width", "search", "max_width", "batch_size",
                "backend", "exclude_seen", "with_reasons", "popularity_penalty", "history_match", "strict", "resume",
                "overwrite", "candidates", "retriever_weight", "shard",
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
@config_file(RankConfig)
@config_options(RankConfig, "model", "candidates", "out", "data", "batch_size", "backend", "strict")
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
@config_options(GenerateConfig, "model", required=("model",))
@click.option("--user", "user_id", help="A user of the model's data (its history is looked up).")
@click.option("--history", "history", multiple=True, help="A history item, by id or title (repeat, oldest first).")
@click.option("--request", "request_text", help="A natural-language request (request models).")
@config_options(GenerateConfig, "k", "with_reasons", "data", "backend",
                flags={"with_reasons": "--with-reasons/--no-reasons"})
@click.option("--json", "as_json", is_flag=True, help="Print the JSON line `generate` writes instead of a table.")
@friendly
def recommend(model, user_id, history, request_text, k, with_reasons, data, backend, as_json) -> None:
    """One user's recommendations at the terminal: the same Recommender and constraints as `generate`."""
    from genrec.infer.jobs import load_for_data, output_settings, to_request
    from genrec.infer.query import Search

    obj = {key: v for key, v in {"user_id": user_id, "history": list(history) or None,
                                  "request": request_text}.items() if v}
    if not obj:
        raise GenrecError("give --user, --history or --request")
    cfg = GenerateConfig(**_overrides(model=model, data=data, backend=backend, k=k, with_reasons=with_reasons))
    rec = load_for_data(cfg, log=lambda m: click.echo(m, err=True))
    users = rec.known_users(data) if user_id and not history else None
    req = to_request(obj, users, rec.catalog, "recommend")
    res = rec.recommend([req], Search.of(cfg))[0].to_json()
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
@config_file(EvaluateConfig)
@config_options(EvaluateConfig, "model", "data", "split", "task", "ks", "max_users", "backend", "batch_size",
                "baselines", "perturb", "popularity_penalty", "history_match", "with_reasons", "candidates",
                "retriever_weight", "search", "max_width", "output",
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
@config_file(FusionConfig)
@config_options(FusionConfig, "model", "candidates", "weights", "history_weights", "max_users", "batch_size",
                "backend")
@click.argument("overrides", nargs=-1)
@friendly
def tune_fusion(config_path, overrides, **opts) -> None:
    """Choose the hybrid's retriever weight (and K) on validation users; generate, evaluate and serve then use it.

    Scores every user's K candidates once (the LLM and the model's retriever), ranks them by
    log p_LLM + W x log softmax(retriever) [+ H x history match, item-token models] for each W (and each K and H
    given), keeps the best NDCG@10 in <model>/fusion.json. An item-token model without a retriever: its history
    match H alone, each searched over the whole catalog.
    """
    from genrec.config import load_config, parse_overrides
    from genrec.eval.fusion import tune_fusion as run_tuning

    cfg = load_config(FusionConfig, config_path, {**parse_overrides(overrides), **_overrides(**opts)})
    click.echo(json.dumps({k: v for k, v in run_tuning(cfg).items() if k != "table"}))


# ------------------------------------------------------------------------------------------------ serve
@main.command()
@config_file(ServeConfig)
@config_options(ServeConfig, "model", "host", "port", "backend", "served_model_name", "api_key")
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
