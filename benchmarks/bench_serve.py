"""Load test of `genrec serve` on loopback. First the capacity: --warmup requests from --clients concurrent clients
(requests/s of the 200s). Then open-loop arrivals at --overload x that capacity for --seconds: a mix of chat,
chat streaming, completions and /v1/recommendations (official openai client for the OpenAI routes). Every answer
must be a 200 with catalog items only, or a 503 (queue full, Retry-After) / 408 (deadline): anything else, a 500
included, counts as a failure. Reports requests/s, p50/p99 latency of the 200s, the status mix, and the server's
RSS after warm-up and at the end (target: within 10%). Traffic goes to 127.0.0.1 only; loops are bounded.

    python -m benchmarks.bench_serve [--model runs/sample/model] [--backend hf] [--seconds 60] [--overload 2]
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.common import machine, parser, write_results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = parser(__doc__, model="runs/sample/model", history=10, k=10)
    ap.add_argument("--backend", default="hf")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients while measuring capacity")
    ap.add_argument("--warmup", type=int, default=24, help="requests that measure capacity")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the overload phase")
    ap.add_argument("--overload", type=float, default=2.0, help="arrival rate as a multiple of the capacity")
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=20.0, help="the server's timeout_s (408 past it)")
    args = ap.parse_args()

    from openai import APIStatusError, OpenAI

    from genrec.files import read_jsonl
    from genrec.model_dir import ModelCard

    card = ModelCard.load(args.model)
    titles = {r["title"] for r in card.catalog_rows()}
    ids = {r["item_id"] for r in card.catalog_rows()}
    users = [u for u in read_jsonl(Path(card.data) / "users.jsonl") if len(u["items"]) > args.history + 1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", "--model", args.model, "--port", str(port),
                             "--backend", args.backend, "--served-model-name", "bench", f"timeout_s={args.timeout}",
                             f"max_queue={args.max_queue}"])
    rng = random.Random(0)
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
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=args.timeout + 60)

        def one(i: int) -> tuple[str, float]:
            """(outcome, seconds): 'ok', '503', '408', or 'fail: ...'."""
            hist = users[i % len(users)]["items"][-args.history - 2:-2]
            kind = ("chat", "stream", "completions", "recommendations")[i % 4]
            msg = json.dumps({"history": hist})
            t = time.perf_counter()
            try:
                if kind == "chat":
                    r = client.chat.completions.create(model="bench", n=args.k, messages=[{"role": "user",
                                                                                          "content": msg}])
                    got = [c.message.content for c in r.choices]
                elif kind == "stream":
                    got = collections.defaultdict(str)
                    for chunk in client.chat.completions.create(model="bench", n=args.k, stream=True,
                                                                messages=[{"role": "user", "content": msg}]):
                        for c in chunk.choices:
                            got[c.index] += c.delta.content or ""
                    got = list(got.values())
                elif kind == "completions":
                    got = [c.text for c in client.completions.create(model="bench", n=args.k, prompt=msg).choices]
                else:
                    req = urllib.request.Request(f"{url}/v1/recommendations", data=json.dumps(
                        {"history": hist, "k": args.k}).encode(), headers={"Content-Type": "application/json"})
                    body = json.loads(urllib.request.urlopen(req, timeout=args.timeout + 60).read())
                    got = [r["item_id"] for r in body["recommendations"]]
                valid = ids if kind == "recommendations" else titles
                ok = len(got) == args.k and all(g in valid for g in got)
                return ("ok" if ok else f"fail: {kind} answered non-catalog or short"), time.perf_counter() - t
            except APIStatusError as exc:
                code = exc.status_code
            except urllib.error.HTTPError as exc:
                code = exc.code
            except Exception as exc:  # noqa: BLE001 - a failure to count
                return f"fail: {kind} {type(exc).__name__}", time.perf_counter() - t
            return (str(code) if code in (503, 408) else f"fail: {kind} HTTP {code}"), time.perf_counter() - t

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            warm = list(pool.map(one, range(args.warmup)))
        capacity = sum(1 for o, _ in warm if o == "ok") / (time.perf_counter() - t0)
        rss_warm = rss_mb(proc.pid)

        rate = args.overload * capacity
        results: list[tuple[str, float]] = []
        lock = threading.Lock()

        def record(i: int) -> None:
            r = one(i)
            with lock:
                results.append(r)

        t0 = time.perf_counter()
        sent = 0
        with concurrent.futures.ThreadPoolExecutor(max(32, int(rate * (args.timeout + 5)) + 8)) as pool:
            next_at = t0
            while time.perf_counter() - t0 < args.seconds and sent < 100_000:
                pool.submit(record, args.warmup + sent)
                sent += 1
                next_at += rng.expovariate(rate)
                time.sleep(max(0.0, next_at - time.perf_counter()))
        wall = time.perf_counter() - t0
        rss_end = rss_mb(proc.pid)
        health = json.loads(urllib.request.urlopen(f"{url}/health", timeout=10).read())
    finally:
        proc.terminate()
        proc.wait(60)
    outcomes = collections.Counter(o for o, _ in results)
    lat = sorted(t for o, t in results if o == "ok")
    failed = sum(n for o, n in outcomes.items() if o.startswith("fail"))
    res = {"backend": args.backend, "capacity_rps": capacity, "offered_rps": rate, "seconds": wall, "sent": sent,
           "ok": outcomes["ok"], "503": outcomes["503"], "408": outcomes["408"], "failed": failed,
           "failures": {o: n for o, n in outcomes.items() if o.startswith("fail")},
           "ok_rps": outcomes["ok"] / wall,
           "p50_seconds": lat[len(lat) // 2] if lat else None,
           "p99_seconds": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
           "rss_mb_after_warmup": rss_warm, "rss_mb_end": rss_end, "rss_growth": rss_end / rss_warm - 1,
           "health_after": health, "settings": vars(args), "machine": machine()}
    write_results(f"bench_serve_{args.backend}", res, [{k: res[k] for k in (
        "backend", "capacity_rps", "offered_rps", "sent", "ok", "503", "408", "failed", "ok_rps", "p50_seconds",
        "p99_seconds", "rss_mb_after_warmup", "rss_mb_end")}])
    if failed:
        raise SystemExit(f"{failed} request(s) failed: {res['failures']}")


if __name__ == "__main__":
    main()
