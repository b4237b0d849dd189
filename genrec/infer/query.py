"""What a request to the recommender says, typed: who to recommend for (`Query`) and how to search (`Search`). Every
command builds these (generate from a users file, evaluate from a split, serve from a request body) and hands them
to `Recommender.recommend`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from genrec.config import SEARCHES, TEXT_MATCH
from genrec.errors import GenrecError


@dataclass
class Query:
    """One user to recommend for: a known user id and/or an explicit history, optional context and request."""

    user_id: str | None = None
    history: list[str] = field(default_factory=list)
    history_ts: list[int] | None = None
    context: dict = field(default_factory=dict)
    text: str | None = None  # a natural-language request ("something funny for tonight")
    # items never to recommend (when excluding seen); None: the history. Evaluation sends the history minus the
    # target, so a re-consumed target stays rankable for genrec as for the baselines
    seen: set[str] | None = None
    ratings: list[float] | None = None  # the user's rating of each history item, where known (rating task)
    trimmed: int = 0  # oldest stored history items left out of the prompt (serving's max_history)

    def excluded(self, exclude_seen: bool = True) -> set[str]:
        """The items this request must never get back: `seen`, else the history (nothing when not excluding)."""
        if not exclude_seen:
            return set()
        return set(self.history) if self.seen is None else set(self.seen)


@dataclass(frozen=True)
class Search:
    """How to search: the settings that travel together from every command (generate, evaluate, serve,
    recommend) to `Recommender.recommend`. `Search.of(cfg)` reads them from a command's config."""

    k: int = 10
    beam_width: int | None = None  # default: max(k, 10)
    search: str = "beam"  # beam | exact (the certified top-K)
    max_width: int | None = None  # exact: the widest beam it widens to (None: the catalog size)
    exclude_seen: bool = True
    with_reasons: bool = False
    popularity_penalty: float = 0.0  # rank by log p(item) - this * log(1 + training count)
    text_match: float = TEXT_MATCH  # a request's text: + this * MiniLM cosine(request, item text) (Catalog.text_penalty)
    # item tokens: + this * MiniLM cosine(the history's texts, item text) (history_penalty); None: within candidates
    # the model's tuned hybrid's (fusion.json), else 0
    history_match: float | None = None
    # search only the retriever's top K; None: the model's tuned hybrid (fusion.json, `genrec tune-fusion`) if it
    # has one, else the whole catalog; 0: the whole catalog
    candidates: int | None = None
    # within candidates (and a rerank model's K): + this * log softmax(retriever scores over the K); None: the
    # model's tuned weight (fusion.json) if it has one, else 0 (the LLM's order alone)
    retriever_weight: float | None = None

    def __post_init__(self):
        if self.search not in SEARCHES:
            raise GenrecError(f"unknown search {self.search!r} ({', '.join(SEARCHES)})")
        for flag, v in (("--text-match", self.text_match), ("--history-match", self.history_match)):
            if v is not None and (not v >= 0 or v == float("inf")):
                raise GenrecError(f"{flag} must be a finite number >= 0, got {v}")
        if self.max_width is not None and self.max_width < 1:
            raise GenrecError(f"--max-width must be at least 1, got {self.max_width}")

    @property
    def width(self) -> int:
        return max(self.beam_width or max(self.k, 10), self.k)

    @classmethod
    def of(cls, cfg, **settings) -> "Search":
        """The search a command's config asks for (fields it does not have keep their defaults; `candidates`
        is parsed from "retriever:K"), with `settings` on top."""
        from genrec.infer.retriever import parse_candidates

        names = {f.name for f in dataclasses.fields(cls)}
        found = {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}
        if isinstance(found.get("candidates"), str) or found.get("candidates") is None:
            found["candidates"] = parse_candidates(found.get("candidates"))
        return cls(**{**found, **settings})
