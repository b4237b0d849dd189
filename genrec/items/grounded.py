"""Item-token rows from item text, the one owner of how an item's row is made: the title-shaped start of
`item_text=init` (`item_rows_from_titles`), and text-grounded rows (`genrec sft item_text=grounded`), each built
from what the base model reads in the item's text, so sparse and new items lean on their text and popular ones
specialise through a residual.

    row(i) = W f(i) + b + r(i)

  f(i)   the base model's own reading of the item's text ("title. facts"): its final hidden states, mean-pooled,
         computed once per item before training (no gradient) and kept in the model directory
  W, b   a learned map (d x d), starting at s I, s chosen so the rows start at the norm the title-shaped start of
         `item_text=init` uses (ITEM_ROW_SCALE x the vocabulary's mean row norm)
  r(i)   a learned per-item residual starting at 0, pulled back toward 0 by `item_weight_decay`, and dropped
         (`residual_dropout`, each item each time the rows are computed in training) so that W f + b alone must
         score and read items well: the row a cold or new item has (DropoutNet's idea, Volkovs et al. 2017)

The row is both how the model reads the item and how it scores it (an untied output matrix gets the same row).
While training, this module computes the rows (a hook on the input embedding, and the item softmax) and writes
them into the embedding matrices at every save, so a saved model (checkpoint or final) is an ordinary model for HF
and vLLM. An item without training interactions keeps r(i) = 0 (its residual gets no gradient) and is left out of
the training softmax (`logits`): it is an item that did not exist yet, never a negative whose text the map learns
to score low. Its row is W f(i) + b, from its text alone, which is also how an item added after training gets its
row (`rows_for`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from genrec.config import ITEM_TEXT_STYLES
from genrec.errors import GenrecError
from genrec.files import atomic_file
from genrec.items.index import ItemIndex, one_line

# item_id=token rows start at this share of the vocabulary's mean row norm: at full norm the title-shaped rows
# give an initial item cross-entropy of 25.7 nats on Scientific (uniform: 8.39), at 0.1 it is 8.6, so training
# starts near uniform instead of first undoing a confident wrong prior (measured on 150 windows)
ITEM_ROW_SCALE = 0.1


def item_rows_from_titles(model, tok, index: ItemIndex, catalog: dict[str, dict]) -> None:
    """item_id=token: each item's new embedding row starts as the mean of the base model's embeddings of its
    title's tokens, rescaled to ITEM_ROW_SCALE x the vocabulary's mean row norm; an untied output matrix gets the
    same start from its own rows. Why: the row is how the model reads the item and (tied, or its output twin) how
    it scores it; a title-shaped start gives every item, trained on or not, the model's prior knowledge of its
    name (resize's rows are the same blank for all)."""
    import torch

    rows = tok.convert_tokens_to_ids(index.new_tokens)
    titles = [tok(" " + one_line(catalog[item]["title"]), add_special_tokens=False, split_special_tokens=True)
              ["input_ids"] for item in index.item_ids]
    # an untied model (Qwen2-style) scores items with its own output matrix: it gets the same start from its rows
    out = model.get_output_embeddings()
    weights = [model.get_input_embeddings().weight]
    if out is not None and out.weight.data_ptr() != weights[0].data_ptr():
        weights.append(out.weight)
    with torch.no_grad():
        for weight in weights:
            old = weight[: min(rows)]
            norm = old.norm(dim=1).mean()
            for row, ids in zip(rows, titles):
                ids = [i for i in ids if i < old.shape[0]]
                if ids:
                    v = old[ids].mean(0)
                    weight[row] = v * (ITEM_ROW_SCALE * norm / v.norm().clamp_min(1e-8))


STYLES = ITEM_TEXT_STYLES  # the config owns the names


def text_features(model, tok, texts: list[str], batch_size: int = 128, max_tokens: int = 64) -> torch.Tensor:
    """[n, d] mean-pooled final hidden states of `model` (the base model, before any adapter) over each text, in
    the order given. Texts are read in batches of similar length (sorted by token count), so little of a batch is
    padding: catalog texts range from a few tokens to the cap. 128 a batch: on 2 cores, 1,000 Scientific texts took
    74 s at 32 a batch and 48-49 s at 128-512 side by side on a loaded machine; idle, `catalog add` of 10,000 items
    took 201 s, as at 32 (203.6 s): the reading is compute-bound (10 layers x up to 64 tokens a text)."""
    body = getattr(model, model.base_model_prefix)
    was_training = model.training
    model.eval()
    ids = tok(texts, truncation=True, max_length=max_tokens, add_special_tokens=False,
              split_special_tokens=True)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(texts), model.config.hidden_size)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(max(len(ids[i]) for i in rows), 1)
            batch = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # right-padded, as the tokenizer pads
                batch[r, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                mask[r, :len(ids[i])] = 1
            hidden = body(input_ids=batch, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            out[rows] = ((hidden * m).sum(1) / m.sum(1).clamp_min(1)).float()
    model.train(was_training)
    return out


class ItemRows(nn.Module):
    """row(i) = W f(i) + b + r(i) for the catalog's items, in item-token order."""

    def __init__(self, features: torch.Tensor, target_norm: float, trained: torch.Tensor | None = None,
                 residual_dropout: float = 0.0):
        super().__init__()
        if not 0 <= residual_dropout < 1:
            raise GenrecError(f"residual_dropout must be in [0, 1), got {residual_dropout}")
        self.residual_dropout = residual_dropout
        self._current: torch.Tensor | None = None  # this forward's rows (`current`)
        n, d = features.shape
        self.register_buffer("features", features.float(), persistent=False)
        scale = target_norm / features.norm(dim=1).mean().clamp_min(1e-8)
        self.map = nn.Linear(d, d)
        with torch.no_grad():
            self.map.weight.copy_(torch.eye(d) * scale)
            self.map.bias.zero_()
        self.residual = nn.Parameter(torch.zeros(n, d))
        self.register_buffer("absent", torch.zeros(n, dtype=torch.bool) if trained is None else ~trained.bool(),
                             persistent=False)
        if trained is not None:
            # only items with training interactions get a residual: one without (a cold item) would otherwise
            # learn one as a negative of the softmax alone; it keeps r = 0, its row from its text, exactly as an
            # item added after training gets it
            mask = trained.float().unsqueeze(1)
            self.residual.register_hook(lambda g: g * mask)

    def forward(self) -> torch.Tensor:
        residual = self.residual
        if self.training and self.residual_dropout:  # each item keeps its residual or reads as text alone
            keep = torch.rand(len(residual), 1, device=residual.device) >= self.residual_dropout
            residual = residual * keep
        return self.map(self.features) + residual

    def begin(self) -> torch.Tensor:
        """The rows of a training forward, computed once at its input hook and shared by the input, the item
        softmax and the text positions until `forget` (the loss's end). Why: one evaluation per step instead of
        three, and one residual-dropout draw, so an item reads and scores alike within a step."""
        self._current = self()
        return self._current

    def current(self) -> torch.Tensor:
        """The forward's rows from `begin`, or (outside a hooked forward) freshly computed and not kept."""
        return self._current if self._current is not None else self()

    def forget(self) -> None:
        self._current = None

    def softmax(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The item softmax's logits of `hidden` [m, d] and `targets` (item positions) renumbered to match, over
        the items with training interactions alone (see the module's docstring)."""
        rows = self.current()
        if not self.absent.any():
            return hidden @ rows.t().to(hidden.dtype), targets
        present = (~self.absent).nonzero().squeeze(1)
        renumber = torch.cumsum(~self.absent, 0) - 1
        if self.absent[targets].any():
            raise GenrecError("item_text=grounded: a training target is an item the training part never shows")
        return hidden @ rows[present].t().to(hidden.dtype), renumber[targets]

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The items' logits at text positions (a reason after an item), items without training interactions at
        -inf: at a text position every item is a negative, and those items are none."""
        logits = hidden @ self.current().t().to(hidden.dtype)
        return logits.masked_fill(self.absent, float("-inf")) if self.absent.any() else logits

    def state(self) -> dict[str, torch.Tensor]:
        return {"map.weight": self.map.weight.detach(), "map.bias": self.map.bias.detach(),
                "residual": self.residual.detach(), "features": self.features}

    def save(self, path: Path) -> None:
        """W, b, the residuals and the features into `path` (its name: genrec.model_dir's ModelCard.ITEM_TEXT)."""
        from safetensors.torch import save

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as fh:
            fh.write(save({k: v.cpu().contiguous() for k, v in self.state().items()}))

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.is_file():
            raise GenrecError(f"{path.parent} has no {path.name}: cannot resume the grounded item rows")
        t = load_file(str(path))
        with torch.no_grad():
            self.map.weight.copy_(t["map.weight"])
            self.map.bias.copy_(t["map.bias"])
            self.residual.copy_(t["residual"])


def attach(model, rows: ItemRows, span: range) -> None:
    """Training reads the items' rows from `rows`: the input embedding's output at item positions is replaced
    (a hook that runs before any other, embedding dropout included). Each forward computes the rows afresh."""
    def hook(module, args, out):
        rows.forget()
        ids = args[0]
        mask = (ids >= span.start) & (ids < span.stop)
        if not mask.any():
            return out
        out = out.clone()
        out[mask] = rows.begin()[ids[mask] - span.start].to(out.dtype)
        return out

    model.get_input_embeddings().register_forward_hook(hook, prepend=True)


def write_rows(model, rows: ItemRows, span: range) -> None:
    """The current rows into the embedding matrices (input, and output when untied): what a saved model holds."""
    was_training = rows.training
    rows.eval()  # the whole rows, no residual dropped (and no random draw taken from training's stream)
    with torch.no_grad():
        values = rows()
    rows.train(was_training)
    with torch.no_grad():
        seen = set()
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is None or emb.weight.data_ptr() in seen:
                continue
            seen.add(emb.weight.data_ptr())
            emb.weight[span.start:span.stop] = values.to(emb.weight.dtype)


class GroundedRows(TrainerCallback):
    """Decays the residuals (item_weight_decay, decoupled like AdamW's) after each step, and before every save
    writes the rows into the embedding matrices and the module's state into the checkpoint. Registered before
    CodeRows, whose on_save then writes those rows beside the adapter. `state_file(output_dir, step)`: where the
    checkpoint of a step keeps the module's state (the layout is genrec.model_dir's)."""

    def __init__(self, rows: ItemRows, span: range, decay: float, state_file):
        self.rows, self.span, self.decay, self.model = rows, span, decay, None
        self.state_file = state_file

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        if self.decay and optimizer is not None:
            with torch.no_grad():
                self.rows.residual.mul_(1 - optimizer.param_groups[0]["lr"] * self.decay)

    def on_save(self, args, state, control, model=None, **kw):
        if state.is_world_process_zero and model is not None:
            write_rows(model, self.rows, self.span)
            self.rows.save(self.state_file(args.output_dir, state.global_step))


def rows_for(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Rows of items training never saw: W f + b (their residual is 0)."""
    return features.float() @ weight.float().t() + bias.float()
