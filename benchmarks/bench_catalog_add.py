"""`genrec catalog add` at scale: seconds to give N new items their rows (the base model reading their texts, the
map, the staged model directory written and swapped in), on a copy of a trained item-token model.

    python -m benchmarks.bench_catalog_add --model runs/bq_cold/scientific/default-item_text=grounded --items 10000

The new items are the model's own catalog rows under new ids (so their texts are as long as real ones); the copy is
removed afterwards. The issue's target: 10,000 items in under 60 s on 2 cores.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, write_results


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an item-token model directory written by `genrec sft`")
    ap.add_argument("--items", type=int, default=10000, help="new items to add")
    ap.add_argument("--name", default="bench_catalog_add", help="results file stem under benchmarks/results/")
    args = ap.parse_args()

    from genrec.files import write_jsonl
    from genrec.model_dir import CHECKPOINT_PREFIX, ModelCard
    from genrec.infer.new_items import add_items

    card = ModelCard.load(args.model)
    rows = card.catalog_rows()
    new = [{"item_id": f"new-{n}", "title": rows[n % len(rows)]["title"], **rows[n % len(rows)].get("attrs", {})}
           for n in range(args.items)]
    with tempfile.TemporaryDirectory(dir=Path(args.model).parent) as tmp:
        model = Path(tmp) / "m"
        shutil.copytree(args.model, model, ignore=shutil.ignore_patterns(CHECKPOINT_PREFIX + "*", "eval-*"))
        write_jsonl(Path(tmp) / "new.jsonl", new)
        t0 = time.perf_counter()
        done = add_items(model, Path(tmp) / "new.jsonl", log=print)
        seconds = time.perf_counter() - t0
    res = {"model": args.model, "catalog_items": len(rows), "new_items": args.items, "row_source": done["rows"],
           "seconds": round(seconds, 1), "items_per_second": round(args.items / seconds, 1), "machine": machine()}
    write_results(args.name, res, [{"model": Path(args.model).name, "catalog items": len(rows),
                                    "new items": args.items, "rows": done["rows"], "seconds": res["seconds"],
                                    "items/s": res["items_per_second"]}])


if __name__ == "__main__":
    main()
