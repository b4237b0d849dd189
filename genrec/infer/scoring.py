"""Scoring given candidates: a preference or rating model's value per (request, candidate), read from the softmax
over its task's answer tokens at the answer position, one forward pass per prompt and nothing generated."""

from __future__ import annotations

from genrec.errors import GenrecError
from genrec.infer.query import Query
from genrec.prompts.builder import PromptBuilder


def score(rec, task: str, requests: list[Query], candidates: list[list[str]],
          batch_size: int = 16) -> list[list[float]]:
    """A scoring task's value per (request, candidate), from the softmax over its answer tokens (tasks.py)."""
    builder = rec.builders.get(task)
    if builder is None or not builder.task.scores_candidates:
        raise GenrecError(f"{rec.dir} was not trained for {task} prediction (train with --task {task})")
    return [[builder.task.value(p) for p in ps]
            for ps in answer_probs(rec, builder, requests, candidates, batch_size)]


def answer_probs(rec, builder: PromptBuilder, requests: list[Query], candidates: list[list[str]],
                  batch_size: int) -> list[list[list[float]]]:
    """Per (request, candidate): the softmax over the task's answer tokens at the first answer position."""
    answers = list(builder.task.answer_ids())
    prompts, owners = [], []
    for n, (req, cands) in enumerate(zip(requests, candidates)):
        for c in cands:
            if c not in rec.catalog:
                raise GenrecError(f"unknown candidate item id {c!r}")
            prompts.append(builder.encode(req.history, req.history_ts, req.context, req.text, c,
                                          history_ratings=req.ratings))
            owners.append(n)
    probs: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        probs += rec.backend.start(chunk, [answers] * len(chunk)).logp.float().softmax(-1).tolist()
    out: list[list[list[float]]] = [[] for _ in requests]
    for n, p in zip(owners, probs):
        out[n].append(p)
    return out
