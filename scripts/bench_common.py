"""Shared helpers for the benchmark scripts: machine facts and writing results as JSON + a Markdown table."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor(), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """Achievable fp32 GEMM rate on this machine: the roofline the benchmarks compare against."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n ** 3 * repeat / (time.perf_counter() - t) / 1e9


def write_results(name: str, results: dict, rows: list[dict], out_dir: str = "runs/bench") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    if rows:
        cols = list(rows[0])
        md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |"
               for r in rows]
        (out / f"{name}.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
    print(f"wrote {out / name}.json")
    return out
