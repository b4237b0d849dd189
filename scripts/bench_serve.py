"""Load test of `genrec serve` on loopback: N concurrent clients send M requests in all (k=10, histories of
--history items; one request in 8 goes through the official openai client's chat route, the rest through
/v1/recommendations). Reports requests/s, p50/p99 latency and failed requests (target: zero failed).

    python scripts/bench_serve.py [--model runs/sample/model] [--backend hf] [--clients 32] [--requests 64]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, write_results  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/sample/model")
    ap.add_argument("--backend", default="hf")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    from openai import OpenAI

    from genrec.files import read_json, read_jsonl

    card = read_json(Path(args.model) / "genrec.json")
    users = [u for u in read_jsonl(Path(card["data"]) / "users.jsonl") if len(u["items"]) > args.history + 1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", "--model", args.model, "--port", str(port),
                             "--backend", args.backend, "--served-model-name", "bench", "timeout_s=3600"])
    try:
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.time() - t0 > 900:
                    raise SystemExit("server did not start")
                time.sleep(1)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=3600)

        def one(i: int) -> tuple[bool, float]:
            hist = users[i % len(users)]["items"][-args.history - 2:-2]
            t = time.perf_counter()
            try:
                if i % 8 == 0:
                    resp = client.chat.completions.create(model="bench", n=args.k, messages=[
                        {"role": "user", "content": json.dumps({"history": hist})}])
                    ok = len(resp.choices) == args.k
                else:
                    req = urllib.request.Request(f"{url}/v1/recommendations", data=json.dumps(
                        {"history": hist, "k": args.k}).encode(), headers={"Content-Type": "application/json"})
                    body = json.loads(urllib.request.urlopen(req, timeout=3600).read())
                    ok = len(body["recommendations"]) == args.k
            except Exception:  # noqa: BLE001 - counted as a failed request
                ok = False
            return ok, time.perf_counter() - t

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(60)
    lat = sorted(t for _, t in results)
    res = {"backend": args.backend, "clients": args.clients, "requests": args.requests, "k": args.k,
           "history": args.history, "seconds": wall, "requests_per_second": args.requests / wall,
           "p50_seconds": lat[len(lat) // 2], "p99_seconds": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
           "failed": sum(1 for ok, _ in results if not ok), "machine": machine()}
    write_results(f"bench_serve_{args.backend}", res, [{k: res[k] for k in (
        "backend", "clients", "requests", "requests_per_second", "p50_seconds", "p99_seconds", "failed")}])


if __name__ == "__main__":
    main()
