"""Training throughput of `genrec sft` with a given config: tokens/s, examples/s, peak RSS, fraction of roofline.

Roofline: a LoRA step on a frozen base costs about 4 * N_params * tokens FLOPs (forward 2N, backward through the
frozen weights for input gradients 2N; the adapters' own cost is ~1% and ignored). We divide the achieved rate by
the fp32 GEMM rate measured on the same machine (`matmul_gflops`), i.e. the achievable, not the datasheet, peak.

    python scripts/bench_sft.py [--config configs/sft.yaml] [--steps 8]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, matmul_gflops, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/sft.yaml")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--data", default=None)
    args = ap.parse_args()

    from genrec.config import SFTConfig, load_config
    from genrec.data import load_prepared
    from genrec.index import ItemIndex
    from genrec.models import load_tokenizer, resolve_base_model
    from genrec.training import build_examples, make_builder, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(SFTConfig, args.config, {"max_steps": args.steps, "output": f"{tmp}/m", "save_steps": 10**6,
                                                    **({"data": args.data} if args.data else {})})
        data = load_prepared(cfg.data)
        tok = load_tokenizer(resolve_base_model(cfg.model))
        builder = make_builder(tok, cfg.prompt, data.catalog, ItemIndex.build(list(data.catalog.values())))
        n_ex = cfg.max_steps * cfg.batch_size * cfg.grad_accum
        examples, _ = build_examples(builder, data.split("train"), n_ex, cfg.seed)
        tokens = sum(len(e["input_ids"]) for e in examples)
        t0 = time.perf_counter()
        train(cfg, log=lambda m: None)
        total = time.perf_counter() - t0
        import json

        card = json.loads((Path(cfg.output) / "genrec.json").read_text())
        import torch
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(str(resolve_base_model(cfg.model)), dtype=torch.float32)
        n_params = sum(p.numel() for p in base.parameters())
    train_s = card["train_seconds"]
    peak_gflops = matmul_gflops()
    achieved = 4 * n_params * tokens / train_s / 1e9
    res = {
        "config": args.config, "steps": cfg.max_steps, "batch_size": cfg.batch_size, "examples": len(examples),
        "tokens": tokens, "mean_tokens_per_example": tokens / len(examples),
        "train_seconds": train_s, "seconds_with_setup": total, "seconds_per_step": train_s / cfg.max_steps,
        "tokens_per_second": tokens / train_s, "examples_per_second": len(examples) / train_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
        "achieved_gflops": achieved, "matmul_gflops": peak_gflops, "fraction_of_roofline": achieved / peak_gflops,
        "machine": machine(),
    }
    write_results("bench_sft", res, [{k: res[k] for k in ("seconds_per_step", "tokens_per_second",
                                                           "examples_per_second", "peak_rss_gib",
                                                           "achieved_gflops", "matmul_gflops",
                                                           "fraction_of_roofline")}])


if __name__ == "__main__":
    main()
