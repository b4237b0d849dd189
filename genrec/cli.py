"""The `genrec` command: parses arguments into typed configs and calls library functions. Nothing else."""

from __future__ import annotations

import functools
import json
import sys

import click

from .errors import GenrecError


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


# options shared by the commands that load a model
backend_option = click.option("--backend", type=click.Choice(["hf", "vllm"]), help="Generation backend [hf].")
batch_option = click.option("--batch-size", type=int, help="Users per batch [8].")
data_option = click.option("--data", "data_dir", help="Prepared data for user_id lookup (default: the model's "
                           "training data; another dataset's: items from its catalog, title models only).")


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
@click.option("--interactions", help="Interactions file (CSV/TSV/JSONL/Parquet, optionally .gz). Default: embedded sample.")
@click.option("--catalog", help="Item catalog file (item id, title, other text fields).")
@click.option("--output", "-o", help="Output directory [runs/sample/data].")
@click.option("--user-col", help="User id column (default: detected, e.g. user_id, userId).")
@click.option("--item-col", help="Item id column in the interactions (default: detected).")
@click.option("--time-col", help="Timestamp column: unix seconds or dates (default: detected).")
@click.option("--rating-col", help="Rating column (optional).")
@click.option("--title-col", help="Title column in the catalog (default: detected; 'none': no titles, ids stand in).")
@click.option("--catalog-item-col", help="Item id column in the catalog (default: as --item-col or detected).")
@click.option("--text-cols", help="Comma-separated catalog columns kept as item attributes (default: all others).")
@click.option("--context-cols", help="Comma-separated interaction columns rendered as context.")
@click.option("--derive-context", help="Context fields derived from each interaction's timestamp (UTC): "
                                       "time_of_day, day_of_week, hour.")
@click.option("--min-user-interactions", type=int, help="k-core: minimum interactions per user [5] (at least 3).")
@click.option("--min-item-interactions", type=int, help="k-core: minimum interactions per item [5].")
@click.option("--max-history", type=int, help="Keep the most recent N items of each history [50].")
@click.option("--min-rating", type=float, help="Keep interactions rated at least this (positives only).")
@click.option("--keep-cold-items/--no-keep-cold-items", default=None, help="Keep catalog items never interacted with.")
@click.option("--hash-user-ids/--no-hash-user-ids", default=None,
              help="Replace user ids by salted HMAC-SHA256 pseudonyms before anything is written.")
@click.option("--user-id-salt", help="Salt for --hash-user-ids [$GENREC_USER_ID_SALT, else random]; never written.")
@click.option("--strict/--no-strict", default=None, help="Fail on interactions naming unknown items instead of dropping.")
@click.option("--overwrite/--no-overwrite", default=None, help="Replace an existing output directory.")
@click.argument("overrides", nargs=-1)
@friendly
def data_prepare(config_path, overrides, **opts) -> None:
    """Validate, k-core filter and split (leave-one-out by time) into an HF DatasetDict.

    Extra KEY=VALUE arguments override config keys.
    """
    from .config import DataConfig, load_config, parse_overrides
    from .data import prepare

    cfg = load_config(DataConfig, config_path, {**parse_overrides(overrides), **_overrides(**opts)})
    prepare(cfg, log=lambda m: click.echo(m, err=True))


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
    from .config import PromptConfig
    from .training import show_prompt

    click.echo(show_prompt(data_dir, user_id, split, PromptConfig(task=task, template=template), model))


# ------------------------------------------------------------------------------------------------ sft
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with SFTConfig keys (configs/sft.yaml).")
@click.option("--data", "data_dir", help="Prepared data directory.")
@click.option("--output", "-o", help="Output model directory.")
@click.option("--model", help="Base model: 'default' (packaged SmolLM2-135M-Instruct) or a local directory.")
@click.option("--task", help="Prompt task (template prompts/<task>.j2): next_item, next_item_reason, request, "
                             "preference, rating, rerank (an LLM ranks SASRec's candidates; add retriever=sasrec to "
                             "any other task to keep the retriever); several comma-separated are mixed in one run, "
                             "the first is the main.")
@click.option("--template", type=click.Path(), help="Your own Jinja template (for the main task).")
@click.option("--init-from", type=click.Path(), help="Continue the adapter of this genrec model (transfer from "
                                                    "another dataset; titles on both sides).")
@click.option("--max-steps", type=int, help="Optimizer steps.")
@click.option("--objective", type=click.Choice(["sequence", "prefix"]),
              help="next_item: sequence = one list per user window, every item a target (the demo's); prefix = one "
                   "prompt per history prefix [prefix].")
@click.option("--max-minutes", type=float, help="Stop training after this many minutes; the learning rate follows "
                                                "the clock and the model is written as at the end.")
@click.option("--item-id", type=click.Choice(["title", "id", "semantic"]),
              help="What the model writes for an item: its title, a random-permutation number, or a semantic "
                   "code learned from item text + co-occurrence [title]. Generate/evaluate/serve use the model's.")
@click.option("--resume/--no-resume", default=None, help="Continue from the last checkpoint in --output.")
@click.option("--merge/--no-merge", default=None, help="Also write a merged full model (for vLLM).")
@click.option("--overwrite/--no-overwrite", default=None, help="Replace an existing output directory.")
@click.argument("overrides", nargs=-1)
@friendly
def sft(config_path, data_dir, output, model, task, template, init_from, max_steps, objective, max_minutes, item_id,
        resume, merge, overwrite, overrides) -> None:
    """LoRA supervised fine-tuning with TRL on prompt/completion examples.

    Extra KEY=VALUE arguments override config keys, e.g. lora_r=8 prompt.max_history=10.
    Multi-GPU: `accelerate launch -m genrec.cli sft ...` runs the same command distributed.
    """
    from .config import SFTConfig, load_config, parse_overrides
    from .training import train

    tasks = [t.strip() for t in task.split(",") if t.strip()] if task else None
    cfg = load_config(SFTConfig, config_path, {
        **parse_overrides(overrides),
        **_overrides(data=data_dir, output=output, model=model, max_steps=max_steps, objective=objective,
                     max_minutes=max_minutes, item_id=item_id, resume=resume,
                     merge=merge, overwrite=overwrite, init_from=init_from, tasks=tasks,
                     **{"prompt.task": tasks[0] if tasks else None, "prompt.template": template})})
    train(cfg)


# ------------------------------------------------------------------------------------------------ generate
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with GenerateConfig keys.")
@click.option("--model", help="Model directory written by `genrec sft`.")
@click.option("--users", help="Users file: JSONL (or CSV) with user_id and/or history, optional context, request.")
@click.option("--out", help="Output JSONL.")
@data_option
@click.option("--k", type=int, help="Recommendations per user [10].")
@click.option("--beam-width", type=int, help="Beam width (>= k) [max(k, 10)].")
@click.option("--search", type=click.Choice(["beam", "exact"]), help="beam: beam search of --beam-width [beam]; "
              "exact: the certified top-K (searched again, wider, until no pruned prefix could beat the K-th).")
@batch_option
@backend_option
@click.option("--exclude-seen/--include-seen", default=None, help="Never recommend items in the history [on].")
@click.option("--with-reasons/--no-reasons", default=None, help="Add a short reason after each item.")
@click.option("--popularity-penalty", type=float,
              help="Down-weight popular items: rank by log p - this * log(1 + training count) [0 = off].")
@click.option("--strict/--no-strict", default=None, help="Unknown users/items are errors instead of skipped.")
@click.option("--resume/--no-resume", default=None, help="Keep users already in --out and generate the rest.")
@click.option("--candidates", help="retriever:K: search only the model's retriever's top K items (then its order); "
                                  "needs a model trained with retriever=sasrec.")
@click.option("--shard", help="I/N: only this process's 1/N of the users file (lines n with (n-1) %% N == I); join the "
                              "N outputs with `genrec merge-shards`.")
@click.argument("overrides", nargs=-1)
@friendly
def generate(config_path, model, users, out, data_dir, k, beam_width, batch_size, backend, exclude_seen,
             with_reasons, popularity_penalty, strict, resume, candidates, search, shard, overrides) -> None:
    """Top-K recommendations per user, constrained to valid catalog items."""
    from .config import GenerateConfig, load_config, parse_overrides
    from .generation import generate_file

    cfg = load_config(GenerateConfig, config_path, {
        **parse_overrides(overrides),
        **_overrides(model=model, users=users, out=out, data=data_dir, k=k, beam_width=beam_width,
                     batch_size=batch_size, backend=backend, exclude_seen=exclude_seen, with_reasons=with_reasons,
                     popularity_penalty=popularity_penalty, strict=strict, resume=resume, shard=shard,
                     candidates=candidates, search=search)})
    if not cfg.users:
        raise GenrecError("--users FILE is required")
    summary = generate_file(cfg)
    click.echo(json.dumps(summary), err=True)


# ------------------------------------------------------------------------------------------------ rank
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with RankConfig keys.")
@click.option("--model", help="Preference or rating model (`genrec sft --task preference` or `rating`).")
@click.option("--candidates", help="JSONL: user_id and/or history, and candidates (a list of item ids) per line.")
@click.option("--out", help="Output JSONL: each line's candidates ranked by P(yes).")
@data_option
@batch_option
@backend_option
@click.option("--strict/--no-strict", default=None, help="Bad lines are errors instead of skipped.")
@click.argument("overrides", nargs=-1)
@friendly
def rank(config_path, model, candidates, out, data_dir, batch_size, backend, strict, overrides) -> None:
    """Re-rank candidate items per user by P(yes) from a preference model's yes/no logits (or by the expected
    rating of a rating model)."""
    from .config import RankConfig, load_config, parse_overrides
    from .generation import rank_file

    cfg = load_config(RankConfig, config_path, {
        **parse_overrides(overrides),
        **_overrides(model=model, candidates=candidates, out=out, data=data_dir, batch_size=batch_size,
                     backend=backend, strict=strict)})
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
@data_option
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Print the JSON line `generate` writes instead of a table.")
@friendly
def recommend(model, user_id, history, request_text, k, with_reasons, data_dir, backend, as_json) -> None:
    """One user's recommendations at the terminal: the same Recommender and constraints as `generate`."""
    from .config import GenerateConfig
    from .generation import load_for_data, output_settings, to_request

    obj = {key: v for key, v in {"user_id": user_id, "history": list(history) or None,
                                  "request": request_text}.items() if v}
    if not obj:
        raise GenrecError("give --user, --history or --request")
    cfg = GenerateConfig(model=model, data=data_dir, backend=backend or "hf", k=k, with_reasons=with_reasons)
    rec = load_for_data(cfg, log=lambda m: click.echo(m, err=True))
    users = rec.known_users(data_dir) if user_id and not history else None
    req = to_request(obj, users, rec.catalog, "recommend")
    res = rec.recommend([req], k, None, cfg.exclude_seen, with_reasons)[0]
    if as_json:
        click.echo(json.dumps({"index": 1, "user_id": user_id, **res, "settings": output_settings(cfg)},
                              ensure_ascii=False))
        return
    if req.history:
        shown = req.history[-5:]
        click.echo(f"history ({len(req.history)} items, the last {len(shown)}):")
        for i in shown:
            click.echo(f"  - {rec.catalog[i]['title']}")
    if req.request:
        click.echo(f"request: {req.request}")
    click.echo(f"\n{'rank':>4}  {'score':>8}  title" + ("  (popular fallback)" if res.get("fallback") else ""))
    for r in res["recommendations"]:
        score = "" if r["score"] is None else f"{r['score']:.3f}"
        click.echo(f"{r['rank']:>4}  {score:>8}  {r['title']}")
        if r.get("reason"):
            click.echo(f"{'':>16}{r['reason']}")


@main.command("merge-shards")
@click.argument("parts", nargs=-1, required=True)
@click.option("--out", required=True, help="The joined JSONL, ordered by users-file line.")
@friendly
def merge_shards_cmd(parts, out) -> None:
    """Join the outputs of `genrec generate --shard I/N` (any order) into one file."""
    from .generation import merge_shards

    click.echo(json.dumps({"written": merge_shards(list(parts), out), "out": out}), err=True)


# ------------------------------------------------------------------------------------------------ evaluate
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with EvaluateConfig keys.")
@click.option("--model", help="Model directory written by `genrec sft`.")
@click.option("--data", "data_dir", help="Prepared data (default: the model's training data; another dataset's: "
                                        "zero-shot transfer to its catalog, title models only).")
@click.option("--split", type=click.Choice(["valid", "test"]), help="Split to evaluate [test].")
@click.option("--task", help="Task of a multi-task model to measure [its main task]: next_item, request "
                             "(cold-start users), preference (AUC), rating (RMSE/MAE).")
@click.option("--k", "ks", help="Comma-separated cutoffs [1,5,10,20].")
@click.option("--max-users", type=int, help="Evaluate N users drawn at random with --seed (the same N users on every run and "
                                                "model) [all].")
@backend_option
@batch_option
@click.option("--baselines", help="Comma-separated: popular,sasrec (or 'none').")
@click.option("--perturb", help="Also evaluate noisy histories: insert:0.2, drop:0.2 or shuffle (reports the drop).")
@click.option("--popularity-penalty", type=float,
              help="Down-weight popular items: rank by log p - this * log(1 + training count) [0 = off].")
@click.option("--with-reasons/--no-reasons", default=None,
              help="Reason models: measure how often reasons name non-catalog titles or unsupported attributes.")
@click.option("--candidates", help="retriever:K: search only the model's retriever's top K items (then its order); "
                                  "needs a model trained with retriever=sasrec.")
@click.option("--search", type=click.Choice(["beam", "exact"]), help="beam: beam search of --beam-width [beam]; "
              "exact: the certified top-K (searched again, wider, until no pruned prefix could beat the K-th).")
@click.option("--output", "-o", help="Report directory [<model>/eval-<split>].")
@click.argument("overrides", nargs=-1)
@friendly
def evaluate(config_path, model, data_dir, split, task, ks, max_users, backend, batch_size, baselines, perturb,
             popularity_penalty, with_reasons, candidates, search, output, overrides) -> None:
    """Full-ranking HR@K, NDCG@K, MRR, validity and coverage, beside most-popular and SASRec."""
    from .config import EvaluateConfig, load_config, parse_overrides
    from .evaluation import run_evaluation

    if baselines == "none":
        baselines = []
    cfg = load_config(EvaluateConfig, config_path, {
        **parse_overrides(overrides),
        **_overrides(model=model, data=data_dir, split=split, task=task, ks=ks, max_users=max_users, backend=backend,
                     batch_size=batch_size, baselines=baselines, perturb=perturb,
                     popularity_penalty=popularity_penalty, with_reasons=with_reasons, output=output,
                     candidates=candidates, search=search)})
    report = run_evaluation(cfg)
    click.echo(report["markdown"])
    if report.get("intervals_markdown"):
        click.echo("\n" + report["intervals_markdown"])
        if report.get("sasrec") and report["sasrec"]["capped"]:
            click.echo(f"SASRec ({report['sasrec']['source']}) was capped by its time limit ({report['sasrec']['epochs']} "
                       "epochs): a budget baseline, not a converged one.")
        click.echo(report["verdict"])


# ------------------------------------------------------------------------------------------------ serve
@main.command()
@click.option("--config", "config_path", type=click.Path(), help="YAML file with ServeConfig keys.")
@click.option("--model", help="Model directory written by `genrec sft`.")
@click.option("--host", help="Address to bind [127.0.0.1].")
@click.option("--port", type=int, help="Port [8000].")
@backend_option
@click.option("--served-model-name", help="Model name clients send [the model directory's name].")
@click.option("--api-key", help="Require `Authorization: Bearer KEY` on every route but /health [$GENREC_API_KEY].")
@click.argument("overrides", nargs=-1)
@friendly
def serve(config_path, model, host, port, backend, served_model_name, api_key, overrides) -> None:
    """OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions, /v1/recommendations.

    Completions name only catalog items (constrained search); extra KEY=VALUE arguments set limits, e.g.
    max_history=100 timeout_s=60 max_body_bytes=65536 max_queue=64.
    """
    from .config import ServeConfig, load_config, parse_overrides
    from .serving import serve as run_server

    cfg = load_config(ServeConfig, config_path, {
        **parse_overrides(overrides),
        **_overrides(model=model, host=host, port=port, backend=backend, served_model_name=served_model_name,
                     api_key=api_key)})
    run_server(cfg, log=lambda m: click.echo(m, err=True))


if __name__ == "__main__":
    main()
