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

Concurrent requests are joined by one batcher thread into batched searches (`genrec.serve.batcher`). Before a route
reads a request, `genrec.serve.guards` refuses what no route should see (another Host, no API key, a body too large
or nested too deep); the route then parses the body into its model (`genrec.serve.protocol`) and hands it to the
`Service` here, which turns it into recommender queries and their answers into the response.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest  # module level: FastAPI resolves the route annotations here
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from genrec.config import ServeConfig
from genrec.errors import GenrecError
from genrec.infer.answer import Recommendation
from genrec.infer.jobs import title_index, to_request
from genrec.infer.query import Query, Search
from genrec.infer.recommender import Recommender
from genrec.items.text import facts_line
from genrec.serve.batcher import Batcher
from genrec.serve.guards import api_key, error_response, guard, parse_json, read_body
from genrec.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Limits,
    OpenAIFields,
    RecommendationRequest,
    SearchFields,
    UserFields,
    parse,
)

PAGE = Path(__file__).resolve().parent / "static" / "index.html"  # the one page served at /


class Service:
    """Protocol models in, recommender queries to the batcher, answers out as response bodies; independent of the
    web framework (tested through real HTTP)."""

    def __init__(self, rec: Recommender, cfg: ServeConfig):
        self.rec, self.cfg = rec, cfg
        self.name = cfg.served_model_name or rec.dir.name
        self.created = int(time.time())
        self.users = rec.known_users()
        self.limits = Limits(max_k=min(cfg.max_k, len(rec.index.item_ids)), max_prompts=cfg.max_batch_size * 4,
                             max_history=cfg.max_history, max_request_chars=cfg.max_request_chars,
                             with_reasons=rec.with_reasons)
        self.batcher = Batcher(rec, cfg.max_batch_size)
        title_index(rec.catalog)  # built once here, not on the first request that names a title

    # ---------------------------------------------------------------- requests
    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise APIError(404, f"The model '{model}' does not exist (this server serves '{self.name}')",
                           code="model_not_found", param="model")

    def _query(self, fields: UserFields, where: str) -> Query:
        """The recommender's query (to_request refuses unknown users and items, as `genrec generate` does). A
        stored history over max_history keeps its most recent items (a sent one over the limit was a 400)."""
        req = to_request(fields.sent(), self.users, self.rec.catalog, where)
        if len(req.history) > self.cfg.max_history:  # every item stays excluded
            cut = len(req.history) - self.cfg.max_history
            req.history = req.history[cut:]
            req.ratings = req.ratings[cut:] if req.ratings is not None else None
            req.trimmed = cut
        return req

    def _from_text(self, text: str, sent: dict, where: str) -> Query:
        """A message/prompt: a JSON object of request fields, or plain text taken as a natural-language request."""
        fields = dict(sent)
        stripped = text.strip()
        obj = parse_json(stripped, where, lenient=True) if stripped.startswith("{") else None
        if isinstance(obj, dict):
            fields = {**fields, **obj}
        elif stripped:  # free text: a request, and the catalog titles it names read as the history
            if "history" not in fields and "user_id" not in fields:
                named = title_index(self.rec.catalog).find_in(stripped[:self.cfg.max_request_chars])
                if named:
                    fields["history"] = named[-self.cfg.max_history:]
            if self.rec.answers_text(Search()):
                fields.setdefault("request", stripped)
            elif "history" not in fields and "user_id" not in fields:
                raise APIError(400, f"{where}: this model ranks from a history; it was not trained to answer request "
                               "text. Name catalog items in the message (e.g. a title as the catalog writes it), or "
                               "send {\"history\": [...]} or {\"user_id\": ...}")
        if not fields:
            raise APIError(400, f"{where} is empty: send a request text or a JSON object with user_id/history")
        return self._query(parse(UserFields, fields, self.limits, where), where)

    async def _run(self, requests: list[Query], k: int, settings: SearchFields) -> tuple[list[Recommendation], dict]:
        """Each request's Recommendation, and the tokens they used together (`usage_total`)."""
        fut = self.batcher.submit(requests, k, settings.with_reasons, settings.exclude_seen, self.cfg.timeout_s,
                                  self.cfg.max_queue)
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(fut), self.cfg.timeout_s)
            return results, usage_total(results)
        except (asyncio.TimeoutError, TimeoutError):
            fut.cancel()
            raise APIError(408, f"the request did not finish within {self.cfg.timeout_s:g}s", kind="timeout") \
                from None

    # ---------------------------------------------------------------- answers
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                            "owned_by": "genrec"}]}

    async def recommendations(self, body: RecommendationRequest) -> dict:
        # in a worker thread: an unknown title's suggestions scan every catalog title (difflib, ~0.2 s at 10k)
        req = await asyncio.to_thread(self._query, body, "request")
        results, _ = await self._run([req], body.k, body)
        res = results[0].to_json()
        if req.trimmed:
            res["history_trimmed"] = req.trimmed  # the oldest items the prompt left out
        for r in res["recommendations"]:
            r["facts"] = self._facts(r["item_id"])
        res["history"] = [{"item_id": i, "title": self.rec.catalog[i]["title"], "facts": self._facts(i)}
                          for i in req.history]  # what the model read, oldest first (for a person to compare)
        return {"user_id": req.user_id, **res,
                "settings": {"k": body.k, "exclude_seen": body.exclude_seen, "backend": self.rec.backend.name,
                             "model": self.name, "with_reasons": body.with_reasons}}

    def _facts(self, item_id: str) -> str:
        attrs = self.rec.catalog[item_id].get("attrs", {})
        return facts_line(attrs, sorted(attrs))

    async def chat(self, body: ChatCompletionRequest) -> dict:
        self._check_model(body.model)
        req = await asyncio.to_thread(self._from_text, body.user_text(), body.sent(), "the user message")
        results, usage = await self._run([req], body.n, body)
        choices = [{"index": i, "message": {"role": "assistant", "content": choice_text(r)},
                    "finish_reason": "stop", "logprobs": None, "item": r}
                   for i, r in enumerate(p.to_json() for p in results[0].items)]
        out = self._envelope("chat.completion", choices, results, usage)
        if req.trimmed:
            out["history_trimmed"] = req.trimmed
        return out

    async def completions(self, body: CompletionRequest) -> dict:
        self._check_model(body.model)
        sent = body.sent()
        reqs = await asyncio.to_thread(lambda: [self._from_text(p, sent, f"prompt {i}")
                                                for i, p in enumerate(body.prompt)])
        results, usage = await self._run(reqs, body.n, body)
        items = [p.to_json() for res in results for p in res.items]
        choices = [{"index": i, "text": choice_text(r), "finish_reason": "stop", "logprobs": None, "item": r}
                   for i, r in enumerate(items)]
        return self._envelope("text_completion", choices, results, usage)

    def _envelope(self, obj: str, choices: list[dict], results: list[Recommendation], usage: dict) -> dict:
        """usage: the prompts the engine really received and the tokens it wrote (counted by the batcher)."""
        out = {"id": f"{'chatcmpl' if obj.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": obj,
               "created": int(time.time()), "model": self.name, "choices": choices, "usage": usage}
        if results[0].fallback:
            out["fallback"] = results[0].fallback
        return out


def usage_total(results: list[Recommendation]) -> dict:
    """The tokens a response's requests used together, as OpenAI reports them: the prompts the engine really received
    and the tokens it wrote."""
    prompt = sum(r.usage.prompt_tokens for r in results)
    completion = sum(r.usage.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def choice_text(rec: dict) -> str:
    """A choice's text: the item's title (+ "\n" and the reason), so a completion can only name a catalog item."""
    return rec["title"] + (f"\n{rec['reason']}" if rec.get("reason") else "")


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


def maybe_stream(resp: dict, body: OpenAIFields):
    if not body.stream:
        return resp

    def events():
        for chunk in stream_chunks(resp, body.include_usage):
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# ---------------------------------------------------------------- routes (registered by create_app)
async def read(request: HTTPRequest, model) -> tuple[Service, Any]:
    """The app's Service, and the request's body as `model`: guarded and read by read_body, then parsed."""
    service = request.app.state.service
    return service, parse(model, await read_body(request, service.cfg.max_body_bytes), service.limits)


async def health(request: HTTPRequest):
    service: Service = request.app.state.service
    alive = service.batcher.thread.is_alive()
    body = {"status": "ok" if alive else "error", "model": service.name, "backend": service.rec.backend.name,
            "batcher_alive": alive, "queue_depth": service.batcher.waiting(), "max_queue": service.cfg.max_queue,
            **service.batcher.counts}
    return body if alive else JSONResponse(body, status_code=503)


async def models(request: HTTPRequest):
    return request.app.state.service.models()


async def chat_completions(request: HTTPRequest):
    service, body = await read(request, ChatCompletionRequest)
    return maybe_stream(await service.chat(body), body)


async def completions(request: HTTPRequest):
    service, body = await read(request, CompletionRequest)
    return maybe_stream(await service.completions(body), body)


async def recommendations(request: HTTPRequest):
    service, body = await read(request, RecommendationRequest)
    return await service.recommendations(body)


async def page():
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


ROUTES = [("/health", health, "GET"), ("/v1/models", models, "GET"), ("/", page, "GET"),
          ("/v1/chat/completions", chat_completions, "POST"), ("/v1/completions", completions, "POST"),
          ("/v1/recommendations", recommendations, "POST")]


# ---------------------------------------------------------------- errors: every one in the OpenAI envelope
async def on_genrec_error(_request, exc: GenrecError):
    """A GenrecError is bad input with a one-line message: a 400, unless it is an APIError with its own status."""
    return error_response(exc if isinstance(exc, APIError) else APIError(400, str(exc)))


async def on_http_error(_request, exc: StarletteHTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(APIError(exc.status_code, str(exc.detail), kind))


async def on_validation_error(_request, _exc):  # no route takes FastAPI-parsed parameters: kept so none is a 422
    return error_response(APIError(400, "invalid request"))


async def on_internal_error(_request, exc: Exception):
    return error_response(APIError(500, f"internal error: {type(exc).__name__}", "server_error"))


HANDLERS = [(GenrecError, on_genrec_error), (StarletteHTTPException, on_http_error),
            (RequestValidationError, on_validation_error), (Exception, on_internal_error)]


def create_app(rec: Recommender, cfg: ServeConfig) -> FastAPI:
    service = Service(rec, cfg)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.batcher.close()

    app = FastAPI(title="genrec", version="1", description=__doc__.split("\n\n")[0], lifespan=lifespan)
    app.state.service = service
    app.middleware("http")(guard(cfg))
    for exc_type, handler in HANDLERS:
        app.add_exception_handler(exc_type, handler)
    for path, route, method in ROUTES:
        app.add_api_route(path, route, methods=[method])
    return app


def serve(cfg: ServeConfig, log=print) -> None:
    import uvicorn

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not api_key(cfg):
        log(f"warning: serving on {cfg.host} without an API key: anyone who can reach it may call it "
            "(set --api-key or GENREC_API_KEY)")
    rec = Recommender(cfg.model, cfg.dtype, cfg.backend, cfg.vllm)
    if rec.matches_text(Search()) or (rec.fusion or {}).get("history_match"):  # before the first request's timeout
        log(f"reading the text of {len(rec.catalog)} items for request and history matching")
        rec.catalog.text_embeddings()
    app = create_app(rec, cfg)
    log(f"serving {app.state.service.name} ({cfg.backend}) on http://{cfg.host}:{cfg.port}/v1")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)
