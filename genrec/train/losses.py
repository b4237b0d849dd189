"""The training loss and what shapes it: the item softmax (`item_softmax_loss`, for runs whose every supervised
token is an item token), embedding dropout, and the SFTTrainer subclass that takes token-budget batches and that
loss (`token_batch_trainer`)."""

from __future__ import annotations

from genrec.errors import GenrecError
from genrec.items.index import ItemIndex
from genrec.prompts.builder import PromptBuilder

GROUNDED_SCOPE = ("item_text=grounded builds item-token rows for the item softmax: item_id=token with the sequence "
                  "objective and the next_item task alone")
SMOOTHING_SCOPE = "label_smoothing applies to the item softmax: item_id=token with the sequence objective"


def item_softmax_rows(index: ItemIndex, builders: dict[str, PromptBuilder], span: range | None,
                      examples: list[dict], label_smoothing: float, grounded: bool) -> range | None:
    """The item tokens' rows when the loss is the item softmax, else None: item tokens in sequence lists only. Every
    supervised token is an item (checked here, once, on the examples), or text a builder writes after an item (a
    reason, `prompt.reason_share`), which the loss scores over the whole vocabulary. Label smoothing and grounded
    rows need the item softmax."""
    only_items = index.rules.one_token and all(b.per_window for b in builders.values())
    rows = span if only_items else None
    writes_text = any(b.with_reasons for b in builders.values())
    if rows is not None and not writes_text and any(t not in rows for e in examples
                                                    for t, m in zip(e["input_ids"], e["completion_mask"]) if m):
        raise GenrecError("item softmax: a supervised token is not an item token (a template writes other text "
                          "after an item)")
    if label_smoothing and rows is None:
        raise GenrecError(SMOOTHING_SCOPE)
    if grounded and rows is None:
        raise GenrecError(GROUNDED_SCOPE)
    return rows


def item_softmax_loss(model, inputs: dict, rows: range, num_items_in_batch=None, smoothing: float = 0.0,
                      item_matrix=None, text_weight: float = 1.0):
    """Cross-entropy of each supervised next token: an item over the item tokens' rows alone (SASRec's full
    softmax over the catalog), text (a reason after an item) over the whole vocabulary and weighted by
    `text_weight` (`reason_weight`); from the final hidden states of the supervised positions only.

    Why: with item_id=token the search only ever compares items, so the other ~49k vocabulary logits are needed at
    text positions alone; computing them at every position was half of a training step's time on CPU (measured:
    5.1 s -> 3.0 s for a 1,024-token batch)."""
    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    hidden = body(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).last_hidden_state
    target = inputs["labels"][:, 1:]
    keep = target != -100
    y, h = target[keep], hidden[:, :-1][keep]
    is_item = (y >= rows.start) & (y < rows.stop)
    out = base.get_output_embeddings().weight
    # item_text=grounded: the rows and their logits come from grounded.ItemRows, not the embedding matrix
    if item_matrix is not None:
        logits, y_item = item_matrix.softmax(h[is_item], y[is_item] - rows.start)
    else:
        logits, y_item = h[is_item] @ out[rows.start:rows.stop].t(), y[is_item] - rows.start
    loss = F.cross_entropy(logits.float(), y_item, reduction="sum", label_smoothing=smoothing)
    if not is_item.all():  # text: the base vocabulary and the items' current rows (an item never stands in text)
        ht = h[~is_item]
        items = item_matrix.text_logits(ht) if item_matrix is not None else ht @ out[rows.start:rows.stop].t()
        text = torch.cat([ht @ out[:rows.start].t(), items], 1)
        loss = loss + text_weight * F.cross_entropy(text.float(), y[~is_item], reduction="sum")
    if item_matrix is not None:
        item_matrix.forget()  # this forward's rows are used up
    # the Trainer sums micro-batch losses under gradient accumulation: normalise by the accumulated target count
    return loss / (num_items_in_batch if num_items_in_batch is not None else max(len(y), 1))


def embedding_dropout(model, p: float) -> None:
    """`embedding_dropout=p`: dropout on the input embeddings' output, active in training mode only (a forward
    hook: nothing of it is saved, so the written model is unchanged at inference)."""
    if not 0 <= p < 1:
        raise GenrecError(f"embedding_dropout must be in [0, 1), got {p}")
    if p:
        import torch.nn.functional as F

        model.get_input_embeddings().register_forward_hook(lambda mod, args, out: F.dropout(out, p, mod.training))


def token_batch_trainer(base):
    """SFTTrainer whose training batches are given (token-budget batches) instead of a fixed example count, and
    whose loss is the item softmax (`item_softmax_loss`) when given the item tokens' rows."""

    class TokenBatchTrainer(base):
        def __init__(self, *args, batches: list[list[int]], item_rows: range | None = None,
                     label_smoothing: float = 0.0, item_matrix=None, text_weight: float = 1.0, **kw):
            self._batches = batches
            self._text_weight = text_weight
            self._item_rows = item_rows
            self._item_matrix = item_matrix
            self._smoothing = label_smoothing
            super().__init__(*args, **kw)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._item_rows is None or return_outputs:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            return item_softmax_loss(model, inputs, self._item_rows, num_items_in_batch, self._smoothing,
                                     self._item_matrix, self._text_weight)

        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

            ds = self._remove_unused_columns(self.train_dataset, description="training")
            return self.accelerator.prepare(DataLoader(ds, batch_sampler=self._batches, collate_fn=self.data_collator,
                                                       num_workers=0))

    return TokenBatchTrainer
