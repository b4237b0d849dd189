"""Jinja prompt templates -> token ids, with item text kept as plain data.

A template defines blocks `system` and `user` (and optionally `reason`, the supervised explanation that follows
the item). Context passed to every block:
  history    list of items, oldest first: {id, title, target, attrs, facts, timestamp, date, rating}; `facts` is
             the item's knowledge as one compact line ("genres: Comedy, Drama; brand: Acme"), from the
             attributes named in PromptConfig.item_facts; `rating` is the user's rating (1-5) or None
  context    dict of context fields of the request (device, hour, scene, ...), possibly empty
  request    natural-language request text or None
  candidate  an item (preference and rating tasks) or None
  candidates the retriever's candidates (rerank task): items with a `label` ("A", "B", ...), or []
  item       the target item (only in the `reason` block)
  id_style   how items are identified ("title", ...)
  n_history  number of history items shown
Rendering is sandboxed with StrictUndefined. Item and user text is tokenized with special tokens split,
so a title containing "<|im_end|>" reaches the model as the characters, never as the control token.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from genrec.config import PromptConfig
from genrec.errors import GenrecError
from genrec.items.index import ItemIndex
from genrec.items.text import facts_line, shared_values
from genrec.prompts.tasks import RERANK_LABELS, bind_task, rating_level


# The shipped templates: the top-level prompts/ of a source checkout (editable installs too); a wheel installs the
# same files as genrec/templates (pyproject's package-dir).
_PACKAGE = Path(__file__).resolve().parents[1]  # genrec/
PROMPTS_DIR = _PACKAGE / "templates" if (_PACKAGE / "templates").is_dir() else _PACKAGE.parent / "prompts"
_SYS, _USR = "\x00GENREC_SYSTEM\x00", "\x00GENREC_USER\x00"
REASON_SEPARATOR = "\n"


def template_path(cfg: PromptConfig, shipped: str | None = None) -> Path:
    """The template a task's config names, else the shipped one (`shipped`, default: the task's own)."""
    path = Path(cfg.template) if cfg.template else PROMPTS_DIR / f"{shipped or cfg.task}.j2"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.j2")))
        raise GenrecError(f"template {path} does not exist (shipped tasks: {known})")
    return path


@dataclass
class Template:
    path: Path
    source: str
    template: jinja2.Template

    @property
    def has_reason(self) -> bool:
        return "reason" in self.template.blocks

    def render_block(self, block: str, variables: dict, strip: bool = True) -> str:
        """The block's text, stripped (strip=False: exactly as rendered, the template owning its whitespace)."""
        fn = self.template.blocks.get(block)
        if fn is None:
            raise GenrecError(f"template {self.path} has no block '{block}'")
        try:
            text = "".join(fn(self.template.new_context(variables)))
            return text.strip() if strip else text
        except jinja2.UndefinedError as exc:
            raise GenrecError(f"template {self.path}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise GenrecError(f"template {self.path}: {exc}") from None


def load_template(path: str | Path) -> Template:
    path = Path(path)
    source = path.read_text(encoding="utf-8")
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    try:
        tmpl = env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise GenrecError(f"template {path} line {exc.lineno}: {exc.message}") from None
    t = Template(path=path, source=source, template=tmpl)
    for block in ("system", "user"):
        if block not in tmpl.blocks:
            raise GenrecError(f"template {path} must define a '{{% block {block} %}}'")
    return t


def clean_text(text: str, limit: int) -> str:
    """One line, bounded length: item text can never start a new turn or field in the prompt."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PromptBuilder:
    """Turns (history, context, request) into prompt token ids and items into completion token ids."""

    objective = "prefix"  # one prompt per history prefix (SequenceBuilder: one list per user window)
    shipped_template = None  # the task's own template (SequenceBuilder: sequence.j2, whatever the task)
    reads_text = True  # its prompts can carry request text (SequenceBuilder: under prompt.request_share)
    only_task = None  # the one task this objective trains (SequenceBuilder: next_item), None: any
    per_window = False  # one example per history prefix (SequenceBuilder: per user window, every item a target)

    def __init__(self, tokenizer, cfg: PromptConfig, catalog: dict[str, dict], index: ItemIndex,
                 template: Template | None = None):
        self.tok = tokenizer
        self.cfg = cfg
        self.catalog = catalog
        self.index = index
        self._views: dict[str, dict] = {}  # item_view of an item with no time or rating, made once
        self.template = template or load_template(template_path(cfg))
        self.task = bind_task(self, cfg.task)  # what this builder's prompts ask: tasks.py
        self.eos_id = tokenizer.eos_token_id
        sep = self.plain(REASON_SEPARATOR)
        if len(sep) != 1:
            raise GenrecError("the tokenizer must encode a newline as one token")
        self.reason_sep_id = sep[0]
        # item tokens: lists of new tokens, where a chat frame would be most of a short user's window
        self.framed = cfg.chat_frame if cfg.chat_frame is not None else index.rules.chat_framed
        self._frame = self._chat_frame()
        kept = sorted({k for row in catalog.values() for k in row.get("attrs", {})})
        self.fact_keys = kept if cfg.item_facts is None else list(cfg.item_facts)
        missing = [k for k in self.fact_keys if k not in kept]
        if missing:
            raise GenrecError(f"item fact {missing[0]!r} is not a catalog attribute (kept: {', '.join(kept) or 'none'})")

    @property
    def with_reasons(self) -> bool:
        return self.template.has_reason

    @property
    def max_tokens(self) -> int:
        """The longest prompt this builder writes (SequenceBuilder: its window)."""
        return self.cfg.max_prompt_tokens

    @property
    def item_end_id(self) -> int:
        """Token that closes the item part: EOS, or the newline that starts the reason."""
        return self.reason_sep_id if self.with_reasons else self.eos_id

    @property
    def item_ending(self) -> list[int]:
        """The tokens that close an item's identifier (a prefix of another item's would otherwise be an item)."""
        return [self.item_end_id]

    def plain(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _control(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def _chat_frame(self) -> tuple[list[int], list[int], list[int]]:
        """Token ids of the chat template around the system and user text (computed once); without one (or with
        chat_frame off), the start token alone (`wrap` then puts each part on its own line)."""
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        if not self.framed:
            return bos, [], []
        if self.tok.chat_template:
            text = self.tok.apply_chat_template(
                [{"role": "system", "content": _SYS}, {"role": "user", "content": _USR}],
                tokenize=False, add_generation_prompt=True)
            if text.count(_SYS) == 1 and text.count(_USR) == 1 and text.index(_SYS) < text.index(_USR):
                pre, rest = text.split(_SYS)
                mid, post = rest.split(_USR)
                return self._control(pre), self._control(mid), self._control(post)
        return bos, self.plain("\n\n"), self.plain("\n\nAnswer: ")

    def item_view(self, item_id: str, timestamp: int | None = None, rating: float | None = None) -> dict:
        """What a template sees of an item (a fresh dict: callers may add keys). Without a time or a rating it is
        made once per item: a prompt shows up to max_history items and a reason every one of them again."""
        plain = timestamp is None and rating is None
        view = self._views.get(item_id) if plain else None
        if view is None:
            view = self._item_view(item_id, timestamp, rating)
            if plain:
                self._views[item_id] = view
        return {**view, "attrs": dict(view["attrs"])}

    def _item_view(self, item_id: str, timestamp: int | None, rating: float | None) -> dict:
        row = self.catalog.get(item_id)
        if row is None:
            raise GenrecError(f"unknown item id {item_id!r}")
        lim = self.cfg.max_title_chars
        pos = self.index.position.get(item_id)
        attrs = row.get("attrs", {})
        facts = facts_line({k: clean_text(v, lim) for k, v in attrs.items()}, self.fact_keys)
        return {
            "id": item_id,
            "title": clean_text(row["title"], lim),
            "target": self.index.targets[pos] if pos is not None else clean_text(row["title"], lim),
            "attrs": {k: clean_text(v, lim) for k, v in attrs.items()},
            "facts": clean_text(facts, 2 * lim),
            "timestamp": timestamp,
            "date": dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d") if timestamp else "",
            "rating": None if rating is None else rating_level(rating),
        }

    def _variables(self, history, history_ts, context, request, candidate, history_ratings=None,
                   candidates=None) -> dict:
        ts = history_ts if history_ts is not None else [None] * len(history)
        rs = history_ratings if history_ratings is not None else [None] * len(history)
        return {
            "candidates": [{**self.item_view(c), "label": label} for c, label in zip(candidates or [], RERANK_LABELS)],
            "history": [self.item_view(i, t, r) for i, t, r in zip(history, ts, rs)],
            "context": {str(k): clean_text(v, self.cfg.max_title_chars) for k, v in (context or {}).items()},
            "request": clean_text(request, 4 * self.cfg.max_title_chars) if request else None,
            "candidate": self.item_view(candidate) if candidate else None,
            "id_style": self.index.style,
            "n_history": len(history),
        }

    def render(self, history: list[str], history_ts: list[int] | None = None, context: dict | None = None,
               request: str | None = None, candidate: str | None = None,
               history_ratings: list[float] | None = None,
               candidates: list[str] | None = None) -> tuple[str, str, int]:
        """(system text, user text, number of history items kept) within the token budget. A rerank prompt's
        candidate list comes on top of max_prompt_tokens (the history gives way, never a candidate)."""
        if candidates is not None and len(candidates) > len(RERANK_LABELS):
            raise GenrecError(f"a rerank prompt shows at most {len(RERANK_LABELS)} candidates, got {len(candidates)}")
        budget = self.cfg.max_prompt_tokens + sum(
            len(self.plain(f"{v['target']} ({v['facts']})")) + 4 for v in map(self.item_view, candidates or []))
        n = min(len(history), max(self.cfg.max_history, 0))
        while True:
            # Keep the newest n items (and their times/ratings); the target is never part of the prompt.
            recent = [list(x)[len(x) - n:] if x is not None else None for x in (history, history_ts, history_ratings)]
            v = self._variables(recent[0], recent[1], context, request, candidate, recent[2], candidates)
            system, user = self.template.render_block("system", v), self.template.render_block("user", v)
            if len(self.wrap(system, user)) <= budget:
                return system, user, n
            if n == 0:
                raise GenrecError(f"prompt is longer than max_prompt_tokens={self.cfg.max_prompt_tokens} "
                                  "even without history")
            n -= 1

    def wrap(self, system: str, user: str) -> list[int]:
        pre, mid, post = self._frame
        if not self.framed:  # the start token, then each non-empty part on its own line
            return pre + [t for part in (system, user) if part for t in self.plain(part + "\n")]
        return pre + self.plain(system) + mid + self.plain(user) + post

    def encode(self, history: list[str], history_ts: list[int] | None = None, context: dict | None = None,
               request: str | None = None, candidate: str | None = None,
               history_ratings: list[float] | None = None, candidates: list[str] | None = None) -> list[int]:
        system, user, _ = self.render(history, history_ts, context, request, candidate, history_ratings, candidates)
        return self.wrap(system, user)

    def preview(self, row: dict, data) -> str:
        """One prepared row as the model sees it in training: the template, a line about the example, then the
        chat-wrapped prompt and its answer (`genrec prompts show`)."""
        prompt, answer, note = self.task.preview(row, data)
        return f"# template: {self.template.path}\n# {note}\n{self.as_text(prompt)}{self.as_text(answer)}"

    def as_text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def item_tokens(self, target: str) -> list[int]:
        """The exact token sequence the model writes for an item: target text, then the end token."""
        return self.plain(target) + self.item_ending

    def reason_text(self, item_id: str, history: list[str], history_ts: list[int] | None = None,
                    context: dict | None = None, because: str | None = None, request: str | None = None) -> str:
        """The template's `reason` block for `item_id` after `history`. It also sees `because`, the history item
        the reason names (default: the newest; an explained reason passes the model's own choice), `shared`, the
        attribute values both have, and `request`."""
        history = list(history)[-self.cfg.max_history:] if self.cfg.max_history > 0 else []
        v = self._variables(history, None, context, request, None)
        v["item"] = self.item_view(item_id)
        because = because or (history[-1] if history else None)
        v["because"] = self.item_view(because) if because else None
        v["shared"] = shared_values(v["item"]["attrs"], v["because"]["attrs"]) if because else []
        return " ".join(self.template.render_block("reason", v).split())

    def completion(self, item_id: str, history: list[str], context: dict | None = None) -> list[int]:
        pos = self.index.position.get(item_id)
        if pos is None:
            raise GenrecError(f"item {item_id!r} is not in the item index")
        ids = self.item_tokens(self.index.targets[pos])
        if self.with_reasons:
            ids += self.plain(self.reason_text(item_id, history, context=context)) + [self.eos_id]
        return ids
