"""`genrec serve`: an OpenAI-compatible HTTP API over the same Recommender that `generate` and `evaluate` use.

Routes: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both with `stream`),
POST /v1/recommendations (the JSON of one `genrec generate` line).

How a chat/completions request becomes a recommendation request: the last user message (or the prompt) is either
a JSON object with the fields of a users-file line (`user_id`, `history`, `context`, `request`) or plain text, taken
as a natural-language `request`. The same fields may also be sent at the top level of the body (the openai
client's `extra_body`). Choice i is the item ranked i+1 by the constrained search: its text is the item's title
(plus "\n" and the reason for models trained with reasons), so a completion can only ever name a catalog item.
Sampling fields (temperature, top_p, ...) are accepted and ignored: the answer is the search's top-n items by
sequence log-probability (a beam search; the server does not run the certified `search=exact`).

Why genrec's own routes rather than vLLM's OpenAI server: the constraint is a search over the engine (top-K distinct
items by sequence log-probability, with per-user exclusions), not a per-token mask that vLLM's server could apply
to one sampled sequence; both backends therefore sit under the same routes.

Concurrent requests are joined by one batcher thread into batched searches; a request whose deadline has passed
is dropped before it runs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request as HTTPRequest  # module level: FastAPI resolves the route annotations here

from genrec.config import ServeConfig
from genrec.errors import GenrecError
from genrec.infer.jobs import title_index, to_request
from genrec.infer.recommender import Query, Recommender, Search
from genrec.items.text import facts_line

PAGE = Path(__file__).resolve().parent / "static" / "index.html"  # the one page served at /


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param


@dataclass
class Job:
    requests: list[Query]
    k: int
    with_reasons: bool
    exclude_seen: bool
    deadline: float
    future: Future

    @property
    def search(self) -> Search:
        return Search(k=self.k, exclude_seen=self.exclude_seen, with_reasons=self.with_reasons)


class Batcher:
    """One thread owns the model and its tokenizer: it takes every job waiting, checks each job's prompts on their
    own, groups the good ones by their search settings, runs batched searches and counts tokens. Nothing else
    tokenizes: HF tokenizers switch special-token splitting per call on shared state, so a second thread could turn
    "<|im_end|>" in item or user text into the control token (or make the Rust tokenizer raise "Already borrowed").

    Why a job's failure stays its own: a request whose prompt cannot be built (request text on a model without the
    request task, a context over the prompt budget, ...) is failed before it joins a search, and a search that
    fails anyway is rerun job by job, so its batchmates are answered as if they had come alone.

    Why jobs are grouped by k as well: a title or semantic-id search's beam width is max(k, 10), so a k=1 request
    searched beside a k=100 one would get another search than alone. Results never depend on batchmates.

    Deadlines: a job whose deadline has passed when the batcher takes it is dropped unsearched; one that is being
    searched when its deadline passes is searched to the end (a batched search cannot drop one row), its result is
    discarded (the client was answered 408) and it is counted as `expired`, not `served`, in /health."""

    def __init__(self, rec: Recommender, max_batch: int):
        self.rec, self.max_batch = rec, max_batch
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0  # requests (not jobs) waiting: a completions job of 32 prompts counts 32
        self.counts = {"served": 0, "failed": 0, "expired": 0}
        self.thread = threading.Thread(target=self._run, name="genrec-batcher", daemon=True)
        self.thread.start()

    def submit(self, requests: list[Query], k: int, with_reasons: bool, exclude_seen: bool,
               timeout: float, max_queue: int | None = None) -> Future:
        """Queue a job; with `max_queue`, refuse (APIError 503) when its requests would not fit in the queue."""
        if not self.thread.is_alive():
            raise APIError(503, "the model thread is not running", kind="server_error")
        with self._lock:
            if max_queue is not None and self._queued + len(requests) > max_queue:
                raise APIError(503, f"the server is busy ({self._queued} requests waiting); retry shortly",
                               kind="server_busy", code="queue_full")
            self._queued += len(requests)
        fut: Future = Future()
        self.jobs.put(Job(requests, k, with_reasons, exclude_seen, time.monotonic() + timeout, fut))
        return fut

    def waiting(self) -> int:
        """Requests queued and not yet taken by the model thread."""
        return self._queued

    def close(self) -> None:
        self.jobs.put(None)

    def _take(self) -> list[Job] | None:
        """The next job and every job waiting behind it, up to max_batch requests; None: closed."""
        job = self.jobs.get()
        if job is None:
            return None
        batch = [job]
        while sum(len(j.requests) for j in batch) < self.max_batch:
            try:
                nxt = self.jobs.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self.jobs.put(None)
                break
            batch.append(nxt)
        with self._lock:
            self._queued -= sum(len(j.requests) for j in batch)
        return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            now = time.monotonic()
            live = []
            for j in batch:
                if j.deadline <= now or not j.future.set_running_or_notify_cancel():
                    self.counts["expired"] += 1
                    continue
                try:
                    for r in j.requests:
                        self.rec.check(r, j.search)  # this job's prompts, alone
                except Exception as exc:  # noqa: BLE001 - handed to its own request, which answers 4xx/5xx
                    self._fail(j, exc)
                    continue
                live.append(j)
            groups: dict[tuple, list[Job]] = {}
            for j in live:
                groups.setdefault((j.k, j.with_reasons, j.exclude_seen), []).append(j)
            for jobs in groups.values():
                try:
                    self._search(jobs)
                except Exception:  # noqa: BLE001 - not a prompt: find whose it is by running each job alone
                    for j in jobs:
                        try:
                            self._search([j])
                        except Exception as exc:  # noqa: BLE001
                            self._fail(j, exc)

    def _search(self, jobs: list[Job]) -> None:
        """One batched search for jobs of the same settings; each job gets its own results (and usage). Every
        job's answer is built before any future is set, so a failure here leaves every future unset."""
        usage: list[dict] = []
        results = self.rec.recommend([r for j in jobs for r in j.requests], jobs[0].search, usage=usage)
        answers, pos = [], 0
        for j in jobs:
            n = len(j.requests)
            if len(results[pos:pos + n]) != n or len(usage[pos:pos + n]) != n:
                raise RuntimeError("the search returned fewer results than requests")
            answers.append([{**r, "_usage": u} for r, u in zip(results[pos:pos + n], usage[pos:pos + n])])
            pos += n
        for j, answer in zip(jobs, answers):
            if not j.future.done():
                j.future.set_result(answer)
            self.counts["served" if time.monotonic() < j.deadline else "expired"] += 1

    def _fail(self, job: Job, exc: Exception) -> None:
        self.counts["failed"] += 1
        if not job.future.done():
            job.future.set_exception(exc)


class Service:
    """Validation and response shapes, independent of the web framework (tested through real HTTP)."""

    def __init__(self, rec: Recommender, cfg: ServeConfig):
        self.rec, self.cfg = rec, cfg
        self.name = cfg.served_model_name or rec.dir.name
        self.created = int(time.time())
        self.users = rec.known_users()
        self.batcher = Batcher(rec, cfg.max_batch_size)
        title_index(rec.catalog)  # built once here, not on the first request that names a title

    # ---------------------------------------------------------------- parsing
    def _int(self, body: dict, key: str, default: int, lo: int, hi: int) -> int:
        v = body.get(key, default)
        if v is None:
            v = default
        if not isinstance(v, int) or isinstance(v, bool):
            raise APIError(400, f"'{key}' must be an integer", param=key)
        if not lo <= v <= hi:
            raise APIError(400, f"'{key}' must be between {lo} and {hi}", param=key)
        return v

    def _bool(self, body: dict, key: str, default: bool) -> bool:
        v = body.get(key, default)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise APIError(400, f"'{key}' must be a boolean", param=key)
        return v

    def _check_model(self, body: dict) -> None:
        model = body.get("model")
        if model is not None and model != self.name:
            raise APIError(404, f"The model '{model}' does not exist (this server serves '{self.name}')",
                           code="model_not_found", param="model")

    def _request(self, fields: dict, where: str) -> Query:
        hist = fields.get("history")
        if isinstance(hist, list) and len(hist) > self.cfg.max_history:
            raise APIError(400, f"{where}: history has {len(hist)} items; the limit is {self.cfg.max_history}",
                           param="history")
        req_text = fields.get("request")
        if isinstance(req_text, str) and len(req_text) > self.cfg.max_request_chars:
            raise APIError(400, f"{where}: request text is longer than {self.cfg.max_request_chars} characters",
                           param="request")
        try:
            req = to_request(fields, self.users, self.rec.catalog, where)
        except GenrecError as exc:
            raise APIError(400, str(exc)) from None
        if len(req.history) > self.cfg.max_history:  # a stored history (a sent one over the limit is a 400 above):
            cut = len(req.history) - self.cfg.max_history  # its most recent items; every item stays excluded
            req.history = req.history[cut:]
            req.ratings = req.ratings[cut:] if req.ratings is not None else None
            req.trimmed = cut
        return req

    def _from_text(self, text, extra: dict, where: str) -> Query:
        """A message/prompt: a JSON object of request fields, or plain text taken as a natural-language request."""
        if not isinstance(text, str):
            raise APIError(400, f"{where} must be a string")
        fields = {k: extra[k] for k in ("user_id", "history", "context", "request") if k in extra}
        stripped = text.strip()
        obj = parse_json(stripped, where, lenient=True) if stripped.startswith("{") else None
        if isinstance(obj, dict):
            fields = {**fields, **obj}
        elif stripped:  # free text: a request, and the catalog titles it names read as the history
            if "history" not in fields and "user_id" not in fields:
                named = title_index(self.rec.catalog).find_in(stripped[:self.cfg.max_request_chars])
                if named:
                    fields["history"] = named[-self.cfg.max_history:]
            if self.rec.reads_request_text:
                fields.setdefault("request", stripped)
            elif "history" not in fields and "user_id" not in fields:
                raise APIError(400, f"{where}: this model ranks from a history; it was not trained to answer request "
                               "text. Name catalog items in the message (e.g. a title as the catalog writes it), or "
                               "send {\"history\": [...]} or {\"user_id\": ...}")
        if not fields:
            raise APIError(400, f"{where} is empty: send a request text or a JSON object with user_id/history")
        return self._request(fields, where)

    def _settings(self, body: dict, n_key: str) -> tuple[int, bool, bool]:
        n_items = len(self.rec.index.item_ids)
        k = self._int(body, n_key, 1 if n_key == "n" else 10, 1, min(self.cfg.max_k, n_items))
        with_reasons = self._bool(body, "with_reasons", self.rec.with_reasons)
        if with_reasons and not self.rec.with_reasons:
            raise APIError(400, "this model was trained without reasons", param="with_reasons")
        return k, with_reasons, self._bool(body, "exclude_seen", True)

    async def _run(self, requests: list[Query], k: int, reasons: bool, exclude_seen: bool) -> list[dict]:
        fut = self.batcher.submit(requests, k, reasons, exclude_seen, self.cfg.timeout_s, self.cfg.max_queue)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), self.cfg.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            fut.cancel()
            raise APIError(408, f"the request did not finish within {self.cfg.timeout_s:g}s", kind="timeout") \
                from None
        except GenrecError as exc:
            raise APIError(400, str(exc)) from None

    # ---------------------------------------------------------------- routes
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                            "owned_by": "genrec"}]}

    async def recommendations(self, body: dict) -> dict:
        k, reasons, excl = self._settings(body, "k")
        # in a worker thread: an unknown title's suggestions scan every catalog title (difflib, ~0.2 s at 10k)
        req = await asyncio.to_thread(self._request, body, "request")
        res = (await self._run([req], k, reasons, excl))[0]
        res.pop("_usage", None)
        if req.trimmed:
            res["history_trimmed"] = req.trimmed  # the oldest items the prompt left out
        for r in res["recommendations"]:
            r["facts"] = self._facts(r["item_id"])
        res["history"] = [{"item_id": i, "title": self.rec.catalog[i]["title"], "facts": self._facts(i)}
                          for i in req.history]  # what the model read, oldest first (for a person to compare)
        return {"user_id": req.user_id, **res,
                "settings": {"k": k, "exclude_seen": excl, "backend": self.rec.backend.name, "model": self.name,
                             "with_reasons": reasons}}

    def _facts(self, item_id: str) -> str:
        attrs = self.rec.catalog[item_id].get("attrs", {})
        return facts_line(attrs, sorted(attrs))

    def _choice_text(self, rec: dict) -> str:
        return rec["title"] + (f"\n{rec['reason']}" if rec.get("reason") else "")

    async def chat(self, body: dict) -> dict:
        self._check_model(body)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise APIError(400, "'messages' must be a non-empty list of message objects", param="messages")
        users = [m for m in msgs if m.get("role") == "user"]
        if not users:
            raise APIError(400, "'messages' needs a user message", param="messages")
        content = users[-1].get("content")
        if isinstance(content, list):  # content parts: join the text parts
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if not all(isinstance(t, str) for t in texts):
                raise APIError(400, "a text content part's 'text' must be a string", param="messages")
            content = "".join(texts)
        n, reasons, excl = self._settings(body, "n")
        req = await asyncio.to_thread(self._from_text, content, body, "the user message")
        res = (await self._run([req], n, reasons, excl))[0]
        choices = [{"index": i, "message": {"role": "assistant", "content": self._choice_text(r)},
                    "finish_reason": "stop", "logprobs": None, "item": r}
                   for i, r in enumerate(res["recommendations"])]
        out = self._envelope("chat.completion", choices, [res])
        if req.trimmed:
            out["history_trimmed"] = req.trimmed
        return out

    async def completions(self, body: dict) -> dict:
        self._check_model(body)
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not prompts or len(prompts) > self.cfg.max_batch_size * 4:
            raise APIError(400, f"'prompt' must be a string or a list of 1 to {self.cfg.max_batch_size * 4} strings",
                           param="prompt")
        n, reasons, excl = self._settings(body, "n")
        reqs = await asyncio.to_thread(lambda: [self._from_text(p, body, f"prompt {i}") for i, p in enumerate(prompts)])
        results = await self._run(reqs, n, reasons, excl)
        choices, i = [], 0
        for res in results:
            for r in res["recommendations"]:
                choices.append({"index": i, "text": self._choice_text(r), "finish_reason": "stop", "logprobs": None,
                                "item": r})
                i += 1
        return self._envelope("text_completion", choices, results)

    def _envelope(self, obj: str, choices: list[dict], results: list[dict]) -> dict:
        """usage: the prompts the engine really received and the tokens it wrote (counted by the batcher)."""
        used = [r.pop("_usage", {"prompt_tokens": 0, "completion_tokens": 0}) for r in results]
        prompt_tokens = sum(u["prompt_tokens"] for u in used)
        completion_tokens = sum(u["completion_tokens"] for u in used)
        res = results[0]
        out = {"id": f"{'chatcmpl' if obj.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": obj,
               "created": int(time.time()), "model": self.name, "choices": choices,
               "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}}
        if res.get("fallback"):
            out["fallback"] = res["fallback"]
        return out


MAX_DEPTH = 32  # a request's JSON is a few levels deep; deeper is refused before anything walks it recursively


def nesting(obj) -> int:
    """How deep lists and objects nest in parsed JSON (iterative: a hostile body cannot exhaust the stack)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:  # past the limit the answer is known
                stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_json(text: str, what: str, lenient: bool = False):
    """The one parser of client JSON (a body, or a message that is itself JSON): a hostile shape is a 400, never a
    500. `lenient`: text that is not JSON at all gives None (a chat message may be plain text)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if lenient:
            return None
        raise APIError(400, f"{what} is not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise APIError(400, f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise APIError(400, f"{what} is not valid JSON: an integer too long ({exc})") from None
    if nesting(obj) > MAX_DEPTH:
        raise APIError(400, f"{what} is nested more than {MAX_DEPTH} levels deep")
    return obj


def allowed_hosts(cfg: ServeConfig) -> set[str] | None:
    """Host header names a request may carry, or None for any. Why: a web page on another origin can reach a
    loopback server through DNS rebinding (its own name resolving to 127.0.0.1); checking Host stops its requests
    from reading a stored user's history. A server bound to every interface (0.0.0.0, ::) cannot know its names:
    it takes any Host, unless `allowed_hosts` lists them, and needs an API key there anyway."""
    names = {host_name(h) for h in cfg.allowed_hosts if h.strip()}
    if cfg.host in ("127.0.0.1", "localhost", "::1"):
        return names | {"127.0.0.1", "localhost", "::1"}
    if cfg.host in ("0.0.0.0", "::", ""):
        return names or None
    return names | {cfg.host.lower()}


def host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def stream_chunks(resp: dict, include_usage: bool):
    """The SSE events of a finished chat/completions answer: the same choices, as OpenAI-style chunks."""
    chat = resp["object"] == "chat.completion"
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": resp["id"], "object": obj, "created": resp["created"], "model": resp["model"]}
    for c in resp["choices"]:
        if chat:
            parts = [{"role": "assistant", "content": ""}, {"content": c["message"]["content"]}]
            for delta in parts:
                yield {**base, "choices": [{"index": c["index"], "delta": delta, "finish_reason": None,
                                            "logprobs": None}]}
            yield {**base, "choices": [{"index": c["index"], "delta": {}, "finish_reason": "stop",
                                        "logprobs": None}]}
        else:
            yield {**base, "choices": [{"index": c["index"], "text": c["text"], "finish_reason": "stop",
                                        "logprobs": None}]}
    if include_usage:
        yield {**base, "choices": [], "usage": resp["usage"]}


def create_app(rec: Recommender, cfg: ServeConfig):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    service = Service(rec, cfg)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.batcher.close()

    app = FastAPI(title="genrec", version="1", description=__doc__.split("\n\n")[0], lifespan=lifespan)
    app.state.service = service

    def error(status: int, message: str, kind: str = "invalid_request_error", code=None, param=None):
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                            status_code=status)

    @app.exception_handler(APIError)
    async def _api_error(_req, exc: APIError):
        resp = error(exc.status, str(exc), exc.kind, exc.code, exc.param)
        if exc.status == 503:
            resp.headers["Retry-After"] = "1"
        return resp

    key = cfg.api_key or os.environ.get("GENREC_API_KEY") or None
    hosts = allowed_hosts(cfg)

    @app.middleware("http")
    async def _guard(request: HTTPRequest, call_next):
        """Before any route, in this order: the Host header (DNS rebinding), the API key on every route but /health
        and the page (/docs and /openapi.json included), JSON bodies only on POST (a cross-site form or a "simple"
        fetch cannot send application/json without a CORS preflight, which this server never grants)."""
        if hosts is not None and host_name(request.headers.get("host", "")) not in hosts:
            return error(400, "the Host header names another server (add it with allowed_hosts=NAME if it is this "
                              "one)", code="invalid_host")
        if key is not None and request.url.path not in ("/health", "/"):  # the page holds no data; it sends the key
            given = request.headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                return error(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                             "invalid_request_error", "invalid_api_key")
        if request.method == "POST":
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                return error(415, "POST bodies must be sent with Content-Type: application/json",
                             code="unsupported_media_type")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, exc):
        return error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else
                     "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req, exc):
        return error(400, "invalid request")

    @app.exception_handler(Exception)
    async def _internal(_req, exc):
        return error(500, f"internal error: {type(exc).__name__}", "server_error")

    async def read_body(request: HTTPRequest) -> dict:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cfg.max_body_bytes):
            raise APIError(413, f"request body is larger than {cfg.max_body_bytes} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > cfg.max_body_bytes:
                raise APIError(413, f"request body is larger than {cfg.max_body_bytes} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise APIError(400, "request body is not valid UTF-8") from None
        body = parse_json(text, "request body")
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object")
        return body

    def maybe_stream(resp: dict, body: dict):
        if not body.get("stream"):
            return resp
        opts = body.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False

        def events():
            for chunk in stream_chunks(resp, include_usage):
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    async def health():
        alive = service.batcher.thread.is_alive()
        body = {"status": "ok" if alive else "error", "model": service.name, "backend": rec.backend.name,
                "batcher_alive": alive, "queue_depth": service.batcher.waiting(), "max_queue": cfg.max_queue,
                **service.batcher.counts}
        return body if alive else JSONResponse(body, status_code=503)

    @app.get("/v1/models")
    async def models():
        return service.models()

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest):
        body = await read_body(request)
        return maybe_stream(await service.chat(body), body)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await read_body(request)
        return maybe_stream(await service.completions(body), body)

    @app.post("/v1/recommendations")
    async def recommendations(request: HTTPRequest):
        return await service.recommendations(await read_body(request))

    @app.get("/")
    async def page():
        from fastapi.responses import HTMLResponse

        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


def serve(cfg: ServeConfig, log=print) -> None:
    import uvicorn

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not (cfg.api_key or os.environ.get("GENREC_API_KEY")):
        log(f"warning: serving on {cfg.host} without an API key: anyone who can reach it may call it "
            "(set --api-key or GENREC_API_KEY)")
    rec = Recommender(cfg.model, cfg.dtype, cfg.backend, cfg.vllm)
    app = create_app(rec, cfg)
    log(f"serving {app.state.service.name} ({cfg.backend}) on http://{cfg.host}:{cfg.port}/v1")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)
