"""Recommendation requests -> constrained top-K items (+ optional reasons), or scores of given candidates: the one
generation API under `generate` and `rank` (jobs.py), `evaluate` and `serve`.

Empty-history policy: a request with neither history nor request text gets the most popular training items
(flagged `"fallback": "popular"` in its output line).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from genrec.infer.answer import Pick, Recommendation, Usage
from genrec.infer import generation, hybrid, scoring
from genrec.infer.catalog import Catalog
from genrec.infer.query import Query, Search
from genrec.config import PromptConfig
from genrec.infer.constrained import TokenTrie
from genrec.errors import GenrecError
from genrec.files import read_jsonl
from genrec.items.index import ItemIndex
from genrec.model_dir import ModelCard, load_tokenizer
from genrec.prompts.builder import PromptBuilder, load_template
from genrec.infer.retriever import Retriever
from genrec.prompts.sequence import make_builder


class Recommender:
    """A fine-tuned genrec model directory, loaded once, answering batches of requests."""

    def __init__(self, model_dir: str | Path, dtype: str = "auto", backend: str = "hf", vllm=None,
                 adapter: str | Path | None = None):
        from genrec.infer.backends import load_backend

        self.card = card = ModelCard.load(model_dir)
        self.dir = card.dir
        self.tok = load_tokenizer(card.dir)
        self.retriever = Retriever.load(card.dir)  # None for a model trained without one
        self._set_catalog(Catalog(card.catalog_rows(), card.item_index(), card.popularity()))
        # what `genrec tune-fusion` chose on validation users, or None: the hybrid (candidates K, retriever weight w,
        # history match h), or for an item-token model without a retriever h over the whole catalog (K None, w 0)
        self.fusion = card.fusion() if self.retriever is not None or self.can_match_history else None
        if self.index.new_tokens and card.merged_path() is None:
            raise GenrecError(f"{card.dir} writes code tokens but has no merged model (retrain with `genrec sft`)")
        longest = max(b.max_tokens for b in self.builders.values())
        self.backend = load_backend(card, self.tok, backend, dtype, adapter, vllm,
                                    max_model_len=max(1024, longest + 192))  # prompt + item (+ reason)

    def _set_catalog(self, catalog: Catalog) -> None:
        """The items this model recommends and one prompt builder per trained task over them."""
        self.catalog = catalog
        self.index = index = catalog.index
        self.builders: dict[str, PromptBuilder] = {}
        for task, prompt in self.card.task_prompts().items():
            cfg = PromptConfig(**prompt)
            self.builders[task] = make_builder(self.tok, cfg, self.catalog, index, load_template(cfg.template))
        self.builder = self.builders[self.card.main_task]
        self.prompt_cfg = self.builder.cfg
        # The prompt builders each kind of request goes to: the builder that ranks the retriever's candidates with
        # one forward pass; for a history, a sequential task's builder (else the request task's); for request text,
        # the request task's (else the sequential one's)
        writers = [b for b in self.builders.values() if b.task.writes_items]
        self.rerank_prompts = next((b for b in self.builders.values() if b.task.ranks_candidates), None)
        self.history_prompts = next((b for b in writers if not b.task.takes_request), writers[0] if writers else None)
        self.request_prompts = next((b for b in writers if b.task.takes_request), self.history_prompts)

    def use_data(self, data, log=lambda m: None) -> bool:
        """Recommend from the catalog of another prepared dataset (cross-domain transfer, zero-shot): items are
        written as titles, so a title model can name items it never saw. False when the catalog is the model's."""
        if set(data.catalog) == set(self.catalog):
            return False
        if not self.index.rules.writes_words:
            raise GenrecError(f"{self.dir} writes {self.index.style} codes of its own catalog: it cannot recommend "
                              f"from the catalog of {data.path} (only title models transfer)")
        counts = dict(data.training_counts().most_common())
        if self.rerank_prompts is not None:
            raise GenrecError(f"{self.dir} reranks the candidates of its own retriever: it cannot recommend from the "
                              f"catalog of {data.path}")
        self.retriever = self.fusion = None  # it names items of the model's own catalog only
        self._set_catalog(Catalog(list(data.catalog.values()), ItemIndex.build(list(data.catalog.values())), counts))
        log(f"note: {data.path} is not the model's training data: items come from its catalog (zero-shot transfer)")
        return True

    @property
    def trie(self) -> TokenTrie:
        return self.catalog.trie(self.history_prompts or self.builder)

    @property
    def model(self):
        """The transformers model of the HF backend (benchmarks and tests compare against it)."""
        return self.backend.model

    def known_users(self, data_dir: str | Path | None = None) -> dict[str, dict] | None:
        """user_id -> prepared user (its item sequence) from `data_dir` or the data the model was trained on, so
        requests may name a user instead of sending a history; None when that data is not there."""
        path = Path(data_dir or self.card.data or "") / "users.jsonl"
        return {u["user_id"]: u for u in read_jsonl(path)} if path.is_file() else None

    @property
    def reads_request_text(self) -> bool:
        """Whether a request's free text reaches a prompt this model was trained on (a sequence model's lists hold
        item identifiers only unless trained with prompt.request_share; without it, serving reads the catalog
        titles a message names as its history)."""
        return self.request_prompts is not None and self.request_prompts.reads_text

    def matches_text(self, s: Search) -> bool:
        """Whether a request's words are matched to item texts (`Search.text_match` > 0, item tokens: log p + W x
        MiniLM cosine). Why any item-token model, not only one trained with request lines: a next-item model then
        answers a request too, ranking by its history with the request's words added outside the prompt, and keeps
        the ranking that request training costs (docs/results.md#quality_std_scientific_multitask)."""
        return bool(s.text_match) and self.index.rules.one_token

    def matches_history(self, s: Search) -> bool:
        """Whether a history's item texts are matched to item texts (`Search.history_match` > 0, item tokens)."""
        return bool(s.history_match) and self.can_match_history

    def tuned_history_match(self, candidates: int | None) -> float:
        """The history match a search runs with when none is asked for: the one `tune-fusion` chose, where it was
        chosen (within the retriever's K, or over the whole catalog), else 0."""
        tuned = self.fusion or {}
        same = bool(candidates) == (tuned.get("candidates") is not None)
        return float(tuned.get("history_match", 0.0)) if same else 0.0

    @property
    def can_match_history(self) -> bool:
        """An item-token model can add `Catalog.history_penalty` to each item's log p: one token, one score."""
        return self.index.rules.one_token

    def answers_text(self, s: Search) -> bool:
        """Whether request text gets an answer: the model reads it, or its words are matched to item texts."""
        return self.reads_request_text or self.matches_text(s)

    def prompt(self, builder: PromptBuilder, req: Query, s: Search) -> list[int]:
        """A request's prompt. Its text goes in when the builder reads text; when it does not and the words are
        matched (`matches_text`) the prompt is the history's alone; otherwise the builder refuses the text."""
        text = req.text if builder.reads_text or not self.matches_text(s) else None
        return builder.encode(req.history, req.history_ts, req.context, text, history_ratings=req.ratings)

    @property
    def explains(self) -> bool:
        """Whether reasons are explained (`explain.py`) rather than written: an item-token model trained without
        reason lines whose history prompts are searched (not reranked) and whose template words a reason (its
        `reason` block: the sequence objective's)."""
        b = self.history_prompts
        return self.index.rules.one_token and b is not None and not b.with_reasons and b.template.has_reason \
            and not self.reranks

    @property
    def with_reasons(self) -> bool:
        """Whether `--with-reasons` gets a reason per item: written by a model trained with them, or explained."""
        return self.history_prompts is not None and (self.history_prompts.with_reasons or self.explains)

    def recommend(self, requests: list[Query], settings: Search | None = None, with_usage: bool = False,
                  retrieved: list[list[tuple[str, float]]] | None = None, **fields) -> list[Recommendation]:
        """One Recommendation per request, in order, searched as `settings` (a Search; keyword `fields` such as k=5
        build or amend one) says. With a popularity penalty, a pick's `score` is the penalised log-probability the
        items are ranked by. `with_usage` also counts each request's tokens (`Recommendation.usage`: it tokenizes
        every item again, so only callers that report usage ask).

        A rerank model scores its retriever's top K with one forward pass (see `hybrid.rerank`); `candidates=K` makes a
        generative model search only the retriever's top K. Either way the list goes on in the retriever's order
        after those K, so it is a ranking over the whole catalog. `retrieved` (one `self.retrieved` list per
        request, at least max(k, K) long) spares asking the retriever again when the caller already did."""
        s = dataclasses.replace(settings or Search(), **fields)
        candidates, weight = self.checked(s)
        if s.history_match is None:
            s = dataclasses.replace(s, history_match=self.tuned_history_match(candidates))
        results: list[Recommendation | None] = [None] * len(requests)
        groups: dict[int, tuple[PromptBuilder, list[int]]] = {}  # requests per prompt builder, in order
        for n, req in enumerate(requests):
            if not req.history and not req.text:
                results[n] = self._fallback(req, s.k, s.exclude_seen)
            else:
                b = self.route(req)
                groups.setdefault(id(b), (b, []))[1].append(n)
        for builder, todo in groups.values():
            batch = [requests[n] for n in todo]
            if builder.task.ranks_candidates:
                answers = hybrid.rerank(self, batch, s.k, s.exclude_seen, (weight,))[0]
            else:
                pools = None
                if candidates:
                    pools = [retrieved[n] for n in todo] if retrieved is not None else \
                        self.retrieved(batch, max(s.k, candidates), s.exclude_seen)
                answers = generation.search(self, builder, batch, s, candidates, weight, pools, with_usage)
            for n, answer in zip(todo, answers):
                results[n] = answer
        for answer in results:
            if not with_usage:
                answer.usage = None
            elif answer.usage is None:  # the popular fallback: the engine read and wrote nothing
                answer.usage = Usage(per_item=[0] * len(answer.items))
        return results  # type: ignore[return-value]

    def checked(self, s: Search) -> tuple[int | None, float]:
        """The hybrid a search runs with (`hybrid`), after the checks every search passes first, each failing with
        a one-line GenrecError before any work."""
        candidates, weight = self.hybrid(s)
        n_items = len(self.index.item_ids)
        if self.history_prompts is None and self.rerank_prompts is None:
            raise GenrecError(f"{self.dir} is a {'/'.join(self.builders)} model: it scores given candidates "
                              "(use `genrec rank`)")
        if s.k < 1 or s.k > n_items:
            raise GenrecError(f"k must be between 1 and the catalog size ({n_items})")
        if s.with_reasons and not self.with_reasons:
            raise GenrecError("this model was trained without reasons (train with --task next_item_reason; an "
                              "item-token model's reasons are explained from its item rows)")
        if candidates is not None and self.retriever is None:
            raise GenrecError(f"{self.dir} has no retriever for --candidates retriever:K (train it with "
                              "`genrec sft retriever=sasrec`)")
        if candidates is not None and not 1 <= candidates <= n_items:
            raise GenrecError(f"--candidates retriever:K needs 1 <= K <= the catalog size ({n_items})")
        return candidates, weight

    def pick(self, item_id: str, rank: int, score: float | None, reason: str | None = None) -> Pick:
        return Pick(item_id, self.catalog[item_id]["title"], rank, score, reason)

    def check(self, req: Query, settings: Search | None = None) -> None:
        """Route and build one request's prompt as `recommend` would, running nothing on the engine: a request that
        cannot be searched (request text on a model without the request task, a context over the prompt budget)
        raises its GenrecError here, on its own, before the server batches it with others."""
        s = settings or Search()
        if s.with_reasons and not self.with_reasons:
            raise GenrecError("this model was trained without reasons (train with --task next_item_reason; an "
                              "item-token model's reasons are explained from its item rows)")
        if not req.history and not req.text:
            return  # the popular fallback: nothing to build
        builder = self.route(req)
        if not builder.task.ranks_candidates:  # a rerank prompt needs the retriever's candidates: built in the search
            self.prompt(builder, req, s)

    def hybrid(self, s: Search) -> tuple[int | None, float]:
        """(candidates K or None for the whole catalog, retriever weight) a search runs with: what it asks for,
        else the model's tuned hybrid (fusion.json), else the whole catalog and the LLM's order alone."""
        tuned = self.fusion or {}
        candidates = s.candidates if s.candidates is not None else tuned.get("candidates")
        weight, _ = hybrid.retriever_weight(s.retriever_weight, tuned)
        if weight < 0:
            raise GenrecError(f"the retriever weight must be >= 0, got {weight}")
        return candidates or None, float(weight)

    @property
    def reranks(self) -> bool:
        """Histories go to the rerank task (its retriever's K, one forward pass), not to a search: its main task,
        or its only task that reads histories."""
        return self.rerank_prompts is not None and (self.builder is self.rerank_prompts or self.history_prompts is None)

    def route(self, req: Query) -> PromptBuilder:
        """The prompt builder (and so the task) a request with a history or a text goes to."""
        b = self.request_prompts if req.text else (self.rerank_prompts if self.reranks else self.history_prompts)
        if b is None:
            raise GenrecError(f"{self.dir} ranks histories only (it was trained without the request task): send a "
                              "history or a user_id, or train with --task next_item,request")
        return b

    def retrieved(self, requests: list[Query], n: int, exclude_seen: bool) -> list[list[tuple[str, float]]]:
        """The retriever's best n (item id, score) per request, `Query.excluded` left out if asked."""
        if self.retriever is None:
            raise GenrecError(f"{self.dir} has no retriever (train with `genrec sft retriever=sasrec`)")
        return self.retriever.top([r.history for r in requests], [r.excluded(exclude_seen) for r in requests], n)

    def score(self, task: str, requests: list[Query], candidates: list[list[str]],
              batch_size: int = 16) -> list[list[float]]:
        """A scoring task's value per (request, candidate): P(yes) for preference, the expected rating (1-5) for
        rating (`scoring.py`)."""
        return scoring.score(self, task, requests, candidates, batch_size)

    def _fallback(self, req: Query, k: int, exclude_seen: bool) -> Recommendation:
        items = self.catalog.fallback(k, req.excluded(exclude_seen))
        return Recommendation([self.pick(i, r, None) for r, i in enumerate(items, start=1)], fallback="popular")

