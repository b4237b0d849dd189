"""What the server refuses before a route reads a request: a Host header naming another server (DNS rebinding), a
missing API key, a POST that is not JSON, a body over the size limit, text that is not UTF-8 or JSON, and JSON
nested deeper than any request is. Every refusal is an APIError, sent as the OpenAI error envelope."""

from __future__ import annotations

import hmac
import json
import os

from fastapi import Request as HTTPRequest  # module level: FastAPI resolves the annotations here
from fastapi.responses import JSONResponse

from genrec.config import ServeConfig
from genrec.serve.protocol import APIError

MAX_DEPTH = 32  # a request's JSON is a few levels deep; deeper is refused before anything walks it recursively


def error_response(exc: APIError) -> JSONResponse:
    resp = JSONResponse(exc.body(), status_code=exc.status)
    if exc.status == 503:
        resp.headers["Retry-After"] = "1"
    return resp


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


async def read_body(request: HTTPRequest, max_bytes: int) -> dict:
    """A POST body as a JSON object, refused (413) from its Content-Length or, without one, as it streams in past
    `max_bytes`; only then decoded and parsed, with the depth guard."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_bytes):
        raise APIError(413, f"request body is larger than {max_bytes} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise APIError(413, f"request body is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "request body is not valid UTF-8") from None
    body = parse_json(text, "request body")
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    return body


def api_key(cfg: ServeConfig) -> str | None:
    return cfg.api_key or os.environ.get("GENREC_API_KEY") or None


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


def refused(request: HTTPRequest, hosts: set[str] | None, key: str | None) -> APIError | None:
    """Before any route, in this order: the Host header (DNS rebinding), the API key on every route but /health
    and the page (/docs and /openapi.json included), JSON bodies only on POST (a cross-site form or a "simple"
    fetch cannot send application/json without a CORS preflight, which this server never grants)."""
    if hosts is not None and host_name(request.headers.get("host", "")) not in hosts:
        return APIError(400, "the Host header names another server (add it with allowed_hosts=NAME if it is this "
                             "one)", code="invalid_host")
    if key is not None and request.url.path not in ("/health", "/"):  # the page holds no data; it sends the key
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            return APIError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                            code="invalid_api_key")
    if request.method == "POST":
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return APIError(415, "POST bodies must be sent with Content-Type: application/json",
                            code="unsupported_media_type")
    return None


def guard(cfg: ServeConfig):
    """The HTTP middleware that answers `refused` requests (a middleware returns its refusal: the app's exception
    handlers do not see what a middleware raises)."""
    hosts, key = allowed_hosts(cfg), api_key(cfg)

    async def check(request: HTTPRequest, call_next):
        refusal = refused(request, hosts, key)
        return error_response(refusal) if refusal is not None else await call_next(request)

    return check
