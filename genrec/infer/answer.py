"""What the recommender answers, typed: every caller (generate, evaluate, serve, the CLI, benchmarks) reads the
same fields, and `to_json` is the one place a result becomes an output line or a response body."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Pick:
    """One recommended item. `score`: the (penalised, fused) log-score it was ranked by; None after a hybrid's K
    candidates (the retriever's order goes on) and in the popular fallback."""

    item_id: str
    title: str
    rank: int
    score: float | None
    reason: str | None = None

    def to_json(self) -> dict:
        out = {"item_id": self.item_id, "title": self.title, "rank": self.rank, "score": self.score}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass
class Usage:
    """Tokens the engine read and wrote for one request, counted by the thread that owns the tokenizer: the prompt,
    and per item its identifier (+ reason) tokens. A rerank model writes nothing (one forward pass)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    per_item: list[int] = field(default_factory=list)


@dataclass
class Recommendation:
    """One request's answer: its items best first, the tokens it used (when asked for), whether search=exact
    certified the top-K (None: not an exact search) and which fallback answered (None, or "popular" for a request
    with neither history nor text)."""

    items: list[Pick]
    usage: Usage | None = None
    exact: bool | None = None
    fallback: str | None = None

    @property
    def item_ids(self) -> list[str]:
        return [p.item_id for p in self.items]

    def to_json(self) -> dict:
        """The output line's / response's fields: {"recommendations": [...], "exact"?, "fallback"?}."""
        out: dict = {"recommendations": [p.to_json() for p in self.items]}
        if self.exact is not None:
            out["exact"] = self.exact
        if self.fallback is not None:
            out["fallback"] = self.fallback
        return out
