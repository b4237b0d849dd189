"""A real genrec server on loopback for the tests that talk to one (the serving, page, batching, vLLM and
architecture tests), and the two small HTTP helpers they share."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

from genrec.config import ServeConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(rec, **limits):
    import uvicorn

    from genrec.serve.app import create_app

    # a socket bound here and handed to uvicorn: no other test (or xdist worker) can take the port in between
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    cfg = ServeConfig(model=str(rec.dir), port=sock.getsockname()[1], served_model_name="genrec-test", **limits)
    server = uvicorn.Server(uvicorn.Config(create_app(rec, cfg), host="127.0.0.1", port=cfg.port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{cfg.port}"


def post(url: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def a_user(recommender) -> tuple[str, list[str]]:
    from genrec.data.prepared import load_prepared

    data = load_prepared(recommender.card.data)
    uid = next(iter(data.users))
    return uid, data.users[uid]["items"]
