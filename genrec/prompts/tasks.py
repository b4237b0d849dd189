"""Tasks: what a prepared row teaches the model and what a request asks it, one class per task.

Why classes: a task's rules (which examples a row gives, what the answer tokens are, whether the answer is an
item to search for, a token about a given candidate, or a label among the retriever's candidates) used to be
string tests spread over prompts, training, generation and evaluation. Here each task states them once:

  next_item         history -> the next item (the sequence objective is next_item's too, see sequence.py)
  next_item_reason  the same, plus a short reason after the item (the template says so)
  request           a natural-language request (+ at most 2 history items) -> an item answering it (cold start)
  preference        history + a candidate -> "yes" / "no" (scored by the softmax over those two tokens)
  rating            history + a candidate -> the user's rating, one digit 1-5 (softmax over the five)
  rerank            history + the retriever's K candidates under labels A, B, ... -> the target's label

A task is bound to the PromptBuilder that renders its prompts (`builder.task`); the builder renders and
tokenizes, the task decides what to render. A template of your own with another task name behaves as next_item.
"""

from __future__ import annotations

import json
import math
import random

from genrec.data.prepared import sample_negative
from genrec.errors import GenrecError

RATING_LEVELS = (1, 2, 3, 4, 5)
RERANK_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # single tokens in common tokenizers (checked per tokenizer)


def rating_level(rating: float) -> int:
    """A rating on any scale the data uses as the nearest level 1-5 (halves round up, clamped)."""
    return min(RATING_LEVELS[-1], max(RATING_LEVELS[0], math.floor(rating + 0.5)))


class Task:
    """next_item: the protocol every task follows, with next_item's answers."""

    name = "next_item"
    writes_items = True  # the answer is a catalog item, found by the constrained search
    takes_request = False  # the prompt carries the user's request text
    scores_candidates = False  # the answer is one token about a given candidate
    ranks_candidates = False  # the prompt shows the retriever's candidates under labels
    examples_per_row = 1

    def __init__(self, builder, name: str | None = None):
        self.builder = builder
        self.name = name or self.name

    def examples(self, row: dict, rng: random.Random, users: dict[str, dict] | None = None
                 ) -> list[tuple[list[int], list[int]]]:
        """The (prompt ids, completion ids) pairs one prepared row gives; GenrecError when it cannot give one."""
        b = self.builder
        return [(b.encode(row["history"], row["history_ts"], json.loads(row["context"]),
                          history_ratings=row.get("history_ratings")),
                 b.completion(row["target"], row["history"]))]

    def preview(self, row: dict, data) -> tuple[list[int], list[int], str]:
        """What `genrec prompts show` prints for a row: the first example it gives (for preference: the positive)
        and a line about it."""
        prompt, answer = self.examples(row, random.Random(0), data.users)[0]
        return prompt, answer, f"prompt: {len(prompt)} tokens; completion: {len(answer)} tokens"


REQUEST_PHRASES = ("I am looking for something with {}", "Recommend me an item with {}", "Something with {}, please")


def request_for(builder, item_id: str, rng: random.Random) -> str | None:
    """A request an item would answer, from its attributes only (never its title, which would give the answer
    away): "something with genres: Comedy, Romance". None for an item without attributes. The one wording of
    training requests, for the request task and for the sequence objective's request line alike."""
    from genrec.items.text import facts_line

    attrs = builder.item_view(item_id)["attrs"]
    keys = sorted(k for k, v in attrs.items() if v.strip())
    if not keys:
        return None
    picked = rng.sample(keys, rng.randint(1, len(keys)))
    return rng.choice(REQUEST_PHRASES).format(facts_line(attrs, sorted(picked)))


class RequestTask(Task):
    name = "request"
    takes_request = True

    def request_for(self, item_id: str, rng: random.Random) -> str | None:
        return request_for(self.builder, item_id, rng)

    def examples(self, row, rng, users=None):
        """A request built from the target's attributes and at most 2 history items -> the target."""
        b = self.builder
        request = self.request_for(row["target"], rng)
        if request is None:
            raise GenrecError(f"item {row['target']!r} has no attributes to build a request from")
        keep = rng.choice([0, 0, 1, 2])
        history, history_ts = row["history"], row["history_ts"]
        history, history_ts = history[len(history) - keep:], history_ts[len(history_ts) - keep:]
        ratings = row.get("history_ratings")
        ratings = ratings[len(ratings) - keep:] if ratings is not None else None
        return [(b.encode(history, history_ts, json.loads(row["context"]), request, history_ratings=ratings),
                 b.completion(row["target"], history))]


class ScoringTask(Task):
    """The answer is one of `answer_words` about the prompt's candidate, read from its logits, never generated."""

    samples_negatives = False  # Preference: its held-out items are set against sampled non-interacted ones
    writes_items = False
    scores_candidates = True
    answer_words: tuple[str, ...] = ()

    def answer_ids(self) -> tuple[int, ...]:
        """The answer tokens, each exactly one token: the score is a softmax over exactly these."""
        ids = [self.builder.plain(w) for w in self.answer_words]
        if any(len(i) != 1 for i in ids):
            raise GenrecError(f"the tokenizer must encode each of {', '.join(self.answer_words)} as one token")
        return tuple(i[0] for i in ids)

    def answers(self, row, rng, users) -> list[tuple[str, int]]:
        """The (candidate, answer token) pairs a training row gives."""
        raise NotImplementedError

    def value(self, probs: list[float]) -> float:
        """A request's score from the softmax over `answer_words`."""
        raise NotImplementedError

    def held_out(self, row: dict, data, rng: random.Random, negatives: int) -> tuple[list[str], list[float]]:
        """Evaluation: the candidates to score for one held-out row, and the true value of each."""
        raise NotImplementedError

    def judge(self, scores: list[list[float]], truth: list[list[float]], rows: list[dict], cands: list[list[str]],
              data, split: str) -> tuple[dict[str, dict], list[str], str]:
        """Evaluation: metrics per model (genrec and this task's baselines), the table's columns, and what was
        measured, in words."""
        raise NotImplementedError

    def examples(self, row, rng, users=None):
        b = self.builder
        ctx, ratings = json.loads(row["context"]), row.get("history_ratings")
        return [(b.encode(row["history"], row["history_ts"], ctx, candidate=cand, history_ratings=ratings),
                 [answer, b.eos_id]) for cand, answer in self.answers(row, rng, users)]


class Preference(ScoringTask):
    name = "preference"
    samples_negatives = True
    output_key = "p_yes"  # what `genrec rank` writes beside each candidate
    answer_words = ("yes", "no")
    examples_per_row = 2

    def answers(self, row, rng, users):
        """(target, "yes") and (one seeded item the user never interacted with, "no")."""
        yes, no = self.answer_ids()
        seen = set(users[row["user_id"]]["items"]) if users else set(row["history"]) | {row["target"]}
        neg = sample_negative(rng, self.builder.index.item_ids, seen)
        return [(row["target"], yes)] + ([(neg, no)] if neg is not None else [])

    def value(self, probs):
        """P(yes)."""
        return probs[0]

    def held_out(self, row, data, rng, negatives):
        """The held-out item (1) against `negatives` seeded items the user never interacted with (0)."""
        interacted = set(data.users[row["user_id"]]["items"])
        negs = [sample_negative(rng, self.builder.index.item_ids, interacted) for _ in range(negatives)]
        cands = [row["target"]] + [n for n in negs if n is not None]
        return cands, [1] + [0] * (len(cands) - 1)

    def judge(self, scores, truth, rows, cands, data, split):
        """AUC and log-loss of P(yes), beside the AUC of the items' training popularity."""
        from genrec import metrics

        flat_s, flat_y = [p for ps in scores for p in ps], [y for ys in truth for y in ys]
        counts = data.training_counts()
        flat_pop = [float(counts.get(c, 0)) for cs in cands for c in cs]
        results = {"genrec": {"AUC": metrics.auc(flat_s, flat_y), "log_loss": metrics.log_loss(flat_s, flat_y),
                              "mean_p_yes_positive": sum(p for p, y in zip(flat_s, flat_y) if y) / sum(flat_y)},
                   "popular": {"AUC": metrics.auc(flat_pop, flat_y)}}
        negatives = max(len(c) for c in cands) - 1
        return results, ["AUC", "log_loss"], f"1 held-out item vs {negatives} sampled non-interacted item(s) each"


class Rating(ScoringTask):
    name = "rating"
    output_key = "expected_rating"
    answer_words = tuple(str(r) for r in RATING_LEVELS)

    def answers(self, row, rng, users):
        """(target, its rating as a digit 1-5); rows without a rating are an error."""
        if row.get("target_rating") is None:
            raise GenrecError("the rating task needs rated interactions: prepare the data (again) from interactions "
                              "with a rating column")
        return [(row["target"], self.answer_ids()[rating_level(row["target_rating"]) - RATING_LEVELS[0]])]

    def value(self, probs):
        """The expected rating: each level times its probability."""
        return sum(r * q for r, q in zip(RATING_LEVELS, probs))

    def held_out(self, row, data, rng, negatives):
        """The held-out item and the user's rating of it."""
        if row.get("target_rating") is None:
            raise GenrecError(f"{data.path} has no ratings: the rating task needs a rating column")
        return [row["target"]], [row["target_rating"]]

    def judge(self, scores, truth, rows, cands, data, split):
        """RMSE and MAE of the expected rating, beside global, user and item mean ratings."""
        from genrec import metrics
        from genrec.prompts.tasks import rating_baselines

        flat_s, flat_y = [p for ps in scores for p in ps], [y for ys in truth for y in ys]
        results = {"genrec": metrics.rating_errors(flat_s, flat_y)}
        for name, pred in rating_baselines(data, [r["user_id"] for r in rows], [c[0] for c in cands], split).items():
            results[name] = metrics.rating_errors(pred, flat_y)
        return results, ["RMSE", "MAE"], "the expected rating vs the user's rating of the held-out item"


class Rerank(Task):
    """The retriever's candidates under single-token labels; the answer is the target's label (scored by the
    softmax over the K label tokens: one forward pass, never sampled text)."""

    name = "rerank"
    writes_items = False
    ranks_candidates = True

    def label_ids(self, n: int) -> list[int]:
        """The token of each of the first n candidate labels: distinct single tokens (the verbalizer)."""
        if not 1 <= n <= len(RERANK_LABELS):
            raise GenrecError(f"a rerank prompt shows 1 to {len(RERANK_LABELS)} candidates, not {n}")
        ids = [self.builder.plain(c) for c in RERANK_LABELS[:n]]
        if any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != n:
            raise GenrecError("the tokenizer must encode each candidate label A-Z as one distinct token")
        return [i[0] for i in ids]

    @staticmethod
    def training_candidates(ranking: list[str], target: str, k: int, rng: random.Random) -> list[str] | None:
        """A training list: k consecutive items of the retriever's ranking (best first) holding the target, in a
        random order, so the target's label is uniform over the k labels (no position to learn). That is the top k,
        exactly what inference shows, when the target is in it; else the k items ranked around the target. None
        when the ranking does not hold the target.

        Why never the target inserted among the retriever's best k - 1: it is then the one item the retriever did
        not pick, often unlike the others, so "choose the odd one out" would fit the training lists; at test time
        the target is one of the retriever's own picks. In a window of consecutive ranks every candidate fits the
        history about as well as the target does by the retriever's account. (A model trained on inserted lists
        for 30 CPU-minutes, ~100 lists seen, ranked Scientific's test targets below a random order of the same 20,
        NDCG@10 0.0177 against 0.0372, but it answered "F" for 497 of 500 users: a label prior, not a rule.)"""
        if target not in ranking:
            return None
        start = Rerank.window_start(ranking.index(target), len(ranking), k)
        cands = list(ranking[start:start + k])
        rng.shuffle(cands)
        return cands

    @staticmethod
    def window_start(rank: int, n: int, k: int) -> int:
        """Where the k training candidates start in a ranking of n items whose target is at `rank` (0-based): the
        top k when the target is in it, else the k ranked around it."""
        return 0 if rank < k else max(0, min(rank - k // 2, n - k))

    def example(self, row: dict, candidates: list[str]) -> tuple[list[int], list[int]]:
        """The prompt showing `candidates` and the target's label as the answer."""
        b = self.builder
        prompt = b.encode(row["history"], row["history_ts"], json.loads(row["context"]),
                          history_ratings=row.get("history_ratings"), candidates=candidates)
        return prompt, [self.label_ids(len(candidates))[candidates.index(row["target"])], b.eos_id]

    def examples(self, row, rng, users=None):
        raise GenrecError("rerank examples come from the retriever's candidates (training.rerank_examples)")

    def preview(self, row, data):
        """The real candidates come from the model's retriever; here popular items stand in for them (with the
        target among them)."""
        k = self.builder.cfg.rerank_candidates
        cands = [i for i, _ in data.training_counts().most_common() if i not in set(row["history"]) | {row["target"]}]
        cands = self.training_candidates(cands[:k - 1] + [row["target"]], row["target"], k, random.Random(0))
        prompt, answer = self.example(row, cands)
        return prompt, answer, (f"rerank: {len(cands)} candidates (popular stand-ins for the retriever's top "
                                f"{k}, the target among them) at random labels; prompt {len(prompt)} tokens")


TASKS: dict[str, type[Task]] = {t.name: t for t in (Task, RequestTask, Preference, Rating, Rerank)}
TASKS["next_item_reason"] = Task  # the reason is the template's (has_reason); the rules are next_item's


def bind_task(builder, name: str) -> Task:
    """The task named `name`, bound to the builder that renders its prompts (unknown names: next_item's rules)."""
    return TASKS.get(name, Task)(builder, name)


def rating_baselines(data, user_ids: list[str], items: list[str], split: str) -> dict[str, list[float]]:
    """Global, user and item mean ratings from the training part of each sequence (unknowns -> global mean)."""
    train = [(i, r) for u in data.users.values() for i, r in zip(data.train_items(u), u["ratings"])]
    glob = sum(r for _, r in train) / len(train)
    by_item: dict[str, list[float]] = {}
    for i, r in train:
        by_item.setdefault(i, []).append(r)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else glob

    return {"global_mean": [glob] * len(items),
            "user_mean": [mean(data.before_target(data.users[u], split, "ratings")) for u in user_ids],
            "item_mean": [mean(by_item.get(i, [])) for i in items]}
