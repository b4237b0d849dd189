"""The sequence objective: one training sequence per user window, every item of it a target, SASRec-style.

Why: the prefix objective renders one prompt per history prefix, so each interaction is re-encoded several times,
most tokens are the fixed chat frame, and only ~8% of tokens carry loss. Here the template's header (`system`,
`user`) is rendered once per window, then one line per item, oldest first, in the assistant turn:

    <chat frame, header>{before 1}Toy Story (1995)\n{after 1}{before 2}Heat (1995)\n{after 2}...

and the loss covers every item's identifier tokens plus its end token (the newline), from the 2nd item on. At
inference the prompt is exactly the rendered prefix up to where the next item's identifier starts, so constrained
decoding continues the list with the very token sequences training saw (tested id for id).

With item_id=token an item is one new token and needs no newline (no item's token is a prefix of another's): the
list is `<item_12><item_7>...`, one position per item, and the next item's distribution over the whole catalog
is one softmax, so the search is exact at depth one. The shipped template writes no header for that style and
the builder drops the chat frame (`prompt.chat_frame`): either would be most of a short user's window.

Template blocks (see prompts/sequence.j2): `system` and `user` (the header; they see only `id_style`, never the
history, so the header is the same for every window and every request), `before` (text in front of an item's
identifier; it sees `n`, `date`, `timestamp` and `context`, never the item itself, so nothing of the next item
leaks into its own prompt) and `after` (text after the identifier's newline; sees `it`, the item with `title`,
`facts`, `attrs`, `rating`, and `n`). Blocks are rendered as written (no stripping): the template owns whitespace.

Users longer than the window (`max_sequence_tokens`, at most `max_history + 1` items) are cut into windows from
the newest end, each window starting with the item the next one ended on, so every training item after a user's
first is a target exactly once, with as much history before it as fits.
"""

from __future__ import annotations

import datetime as dt

from genrec.config import OBJECTIVES
from genrec.errors import GenrecError
from genrec.prompts.builder import PromptBuilder, clean_text
from genrec.prompts.tasks import request_for

ANSWER_ROOM = 64  # tokens kept free after an inference prompt for the identifier the model writes


class SequenceBuilder(PromptBuilder):
    """A PromptBuilder whose prompts are item lists and whose items end with a newline."""

    objective = "sequence"
    shipped_template = "sequence"
    only_task = "next_item"
    per_window = True

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._ident: dict[str, list[int]] = {}
        self._after: dict[tuple, list[int]] = {}
        self._has_before = "before" in self.template.template.blocks
        self._has_after = "after" in self.template.template.blocks
        for share, block in (("request_share", "request"), ("reason_share", "reason")):
            if not 0 <= getattr(self.cfg, share) <= 1:
                raise GenrecError(f"prompt.{share} must be in [0, 1], got {getattr(self.cfg, share)}")
            if getattr(self.cfg, share) and block not in self.template.template.blocks:
                raise GenrecError(f"prompt.{share} needs a `{block}` block in {self.template.path}")
        self._header = self.wrap(self.template.render_block("system", self._header_vars()),
                                 self.template.render_block("user", self._header_vars()))

    @property
    def reads_text(self) -> bool:
        """Whether its prompts carry request text: trained with request lines (`prompt.request_share`)."""
        return self.cfg.request_share > 0

    def request_line(self, text: str) -> list[int]:
        """The template's `request` block for a request text: written after the history, before the next item."""
        return self.plain(self.template.render_block(
            "request", {"request": clean_text(text, 4 * self.cfg.max_title_chars), "id_style": self.index.style},
            strip=False))

    @property
    def item_end_id(self) -> int:
        return self.reason_sep_id  # the newline that ends an item's line

    @property
    def item_ending(self) -> list[int]:
        """The newline that ends an item's line; none for item_id=token, whose one token is the whole item (no
        item's token sequence is a prefix of another's), so a list is one token per item and the catalog's
        distribution is one softmax."""
        return [] if self.index.rules.one_token else [self.item_end_id]

    @property
    def with_reasons(self) -> bool:
        """Whether it writes a reason after an item: trained with reasons (`prompt.reason_share`)."""
        return self.cfg.reason_share > 0

    def reason_ids(self, item_id: str, history: list[str]) -> list[int]:
        """The supervised reason after an item (the template's `reason` block), closed by EOS, as
        `--with-reasons` then writes it freely after the constrained item."""
        return self.plain(" " + self.reason_text(item_id, history)) + [self.eos_id]

    @property
    def max_tokens(self) -> int:
        return self.cfg.max_sequence_tokens

    def n_targets(self, example: dict) -> int:
        """The items a window supervises: its masked end tokens (item tokens: its masked tokens)."""
        mask = example["completion_mask"]
        if not self.item_ending:  # one token per item: its masked item tokens (not a reason's text)
            if not hasattr(self, "_item_ids"):
                self._item_ids = set(self.tok.convert_tokens_to_ids(self.index.new_tokens))
            return sum(1 for i, m in zip(example["input_ids"], mask) if m and i in self._item_ids)
        return sum(1 for i, m in zip(example["input_ids"], mask) if m and i == self.item_end_id)

    def _header_vars(self) -> dict:
        return {"id_style": self.index.style, "history": [], "context": {}, "request": None, "candidate": None,
                "n_history": 0}

    def ident(self, item_id: str) -> list[int]:
        """The identifier tokens plus the ending: exactly a path of the decoding trie."""
        if item_id not in self._ident:
            pos = self.index.position.get(item_id)
            if pos is None:
                raise GenrecError(f"item {item_id!r} is not in the item index")
            self._ident[item_id] = self.item_tokens(self.index.targets[pos])
        return self._ident[item_id]

    def before(self, n: int, timestamp: int | None, context: dict | None) -> list[int]:
        if not self._has_before:
            return []
        date = dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d") if timestamp else ""
        text = self.template.render_block("before", {"n": n, "timestamp": timestamp, "context": context or {},
                                                     "date": date}, strip=False)
        return self.plain(text) if text else []

    def after(self, item_id: str, n: int, rating: float | None) -> list[int]:
        if not self._has_after:
            return []
        key = (item_id, n, rating)
        if key not in self._after:
            text = self.template.render_block("after", {"it": self.item_view(item_id, None, rating), "n": n},
                                              strip=False)
            self._after[key] = self.plain(text) if text else []
            if len(self._after) > 200_000:
                self._after.clear()
        return self._after[key]

    def _lines(self, items, ts, ratings, first_n: int = 1) -> list[tuple[list[int], list[int], list[int]]]:
        ts = ts if ts is not None else [None] * len(items)
        ratings = ratings if ratings is not None else [None] * len(items)
        return [(self.before(first_n + j, t, None), self.ident(i), self.after(i, first_n + j, r))
                for j, (i, t, r) in enumerate(zip(items, ts, ratings))]

    # ------------------------------------------------------------------------------------------- inference
    def encode(self, history: list[str], history_ts: list[int] | None = None, context: dict | None = None,
               request: str | None = None, candidate: str | None = None,
               history_ratings: list[float] | None = None) -> list[int]:
        """The newest history items that fit (`max_history`, `max_sequence_tokens` less room for the answer),
        rendered as in training, then the next line's `before` text: the model writes the next identifier."""
        if request and not self.reads_text:
            raise GenrecError("a sequence model reads histories; it was not trained to answer request text (train "
                              "it with prompt.request_share; an item-token model answers with --text-match > 0)")
        asked = self.request_line(request) if request else []
        n = min(len(history), max(self.cfg.max_history, 0))
        items = list(history)[len(history) - n:]
        ts = list(history_ts)[len(history_ts) - n:] if history_ts is not None else None
        rs = list(history_ratings)[len(history_ratings) - n:] if history_ratings is not None else None
        lines = self._lines(items, ts, rs)
        budget = self.cfg.max_sequence_tokens - ANSWER_ROOM - len(asked)
        if budget < len(self._header):
            raise GenrecError(f"the request is {len(asked)} tokens: over the prompt budget of "
                              f"{self.cfg.max_sequence_tokens - ANSWER_ROOM}")
        total = len(self._header) + sum(len(a) + len(b) + len(c) for a, b, c in lines)
        drop = 0
        while drop < len(lines) and total > budget:
            total -= sum(len(x) for x in lines[drop])
            drop += 1
        if drop:  # renumber what is left, as training numbers each window from 1
            items, ts, rs = items[drop:], ts[drop:] if ts else None, rs[drop:] if rs else None
            lines = self._lines(items, ts, rs)
        ids = list(self._header)
        for a, b, c in lines:
            ids += a + b + c
        return ids + asked + self.before(len(lines) + 1, None, context)

    # ------------------------------------------------------------------------------------------- training
    def windows(self, n_items: int, lengths: list[int]) -> list[tuple[int, int]]:
        """[start, end) item spans from the newest end: each holds at most max_history + 1 items and
        max_sequence_tokens tokens (a single pair is kept even when longer), and starts with the item the next
        window ended on, so every item but the first is a target exactly once."""
        out, end, cap = [], n_items, max(self.cfg.max_history, 1) + 1
        while end >= 2:
            start, tokens = end - 1, len(self._header) + lengths[end - 1]
            while start > 0 and end - start < cap and tokens + lengths[start - 1] <= self.cfg.max_sequence_tokens:
                start -= 1
                tokens += lengths[start]
            start = min(start, end - 2)
            out.append((start, end))
            end = start + 1
        return out[::-1]

    def sequence_examples(self, items: list[str], ts: list[int] | None = None,
                          ratings: list[float] | None = None, rng=None) -> list[dict]:
        """Tokenized windows of one user's training sequence: input_ids and completion_mask (1 on every target
        item's identifier and end token). Under `prompt.request_share` (and an `rng`), that share of windows
        writes a request for its last item before that item's line (`with_request`)."""
        if len(items) < 2:
            return []
        full = self._lines(items, ts, ratings)
        spans = self.windows(len(items), [sum(len(x) for x in line) for line in full])
        out = []
        for start, end in spans:
            # numbering restarts per window, as at inference
            lines = full[start:end] if start == 0 else self._lines(
                items[start:end], ts[start:end] if ts else None, ratings[start:end] if ratings else None)
            ids, mask = list(self._header), [0] * len(self._header)
            for j, (a, b, c) in enumerate(lines):
                target = 1 if j > 0 else 0
                last = j == len(lines) - 1 and rng is not None
                if last and self.cfg.request_share:
                    out += self.with_request(ids, mask, items[end - 1], rng)
                if last and self.cfg.reason_share and rng.random() < self.cfg.reason_share:
                    c = self.reason_ids(items[end - 1], items[start:end - 1])  # the window ends on its reason
                    ids += a + b + c
                    mask += [0] * len(a) + [1] * (len(b) + len(c))
                    continue
                ids += a + b + c
                mask += [0] * len(a) + [target] * len(b) + [0] * len(c)
            out.append({"input_ids": ids, "completion_mask": mask})
        return out

    def with_request(self, ids: list[int], mask: list[int], item: str, rng) -> list[dict]:
        """For `request_share` of windows: the request line for `item` (from its attributes, the request task's
        wording) appended to the window so far (`ids`, in place), so the window's last target is answered to the
        request and every earlier target, which cannot see it, is trained as before. A quarter of these also give
        an example of the request alone, no history (a new user who only says what they want). Returns those."""
        if rng.random() >= self.cfg.request_share:
            return []
        text = request_for(self, item, rng)
        if text is None:
            return []
        asked = self.request_line(text)
        if len(ids) + len(asked) + ANSWER_ROOM > self.cfg.max_sequence_tokens:
            return []
        ids += asked
        mask += [0] * len(asked)
        if rng.random() >= 0.25:
            return []
        alone = list(self._header) + asked + self.before(1, None, None)
        answer = self.ident(item)
        if self.cfg.reason_share and rng.random() < self.cfg.reason_share:  # a reason with no history to name
            answer = answer + self.reason_ids(item, [])
        return [{"input_ids": alone + answer, "completion_mask": [0] * len(alone) + [1] * len(answer)}]

    def completion(self, item_id: str, history: list[str], context: dict | None = None) -> list[int]:
        return self.ident(item_id)

    def preview(self, row: dict, data) -> str:
        """The window ending at the row's target, and the prompt that asks for that target."""
        ex = self.sequence_examples(list(row["history"]) + [row["target"]],
                                    list(row["history_ts"]) + [row["target_ts"]])[-1]
        prompt = self.encode(row["history"], row["history_ts"])
        return (f"# template: {self.template.path}\n# sequence objective: this window has {len(ex['input_ids'])} "
                f"tokens, {sum(ex['completion_mask'])} with loss; the prompt for its last item is {len(prompt)} "
                f"tokens\n{self.as_text(prompt)}{self.as_text(self.ident(row['target']))}")


OBJECTIVE: dict[str, type[PromptBuilder]] = {b.objective: b for b in (PromptBuilder, SequenceBuilder)}
assert set(OBJECTIVE) == set(OBJECTIVES), "config.OBJECTIVES names the builders' objectives"


def make_builder(tokenizer, cfg, catalog: dict[str, dict], index, template=None) -> PromptBuilder:
    """The prompt builder a task's config asks for: its objective's builder class."""
    from genrec.prompts.builder import load_template, template_path

    if cfg.objective not in OBJECTIVE:
        raise GenrecError(f"unknown objective {cfg.objective!r} ({', '.join(OBJECTIVES)})")
    cls = OBJECTIVE[cfg.objective]
    if cls.only_task and cfg.task != cls.only_task:
        raise GenrecError(f"the {cfg.objective} objective is for {cls.only_task}; task {cfg.task!r} needs "
                          f"objective=prefix")
    template = template or load_template(template_path(cfg, cls.shipped_template))
    return cls(tokenizer, cfg, catalog, index, template)
