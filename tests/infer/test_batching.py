"""The server's batcher and its guards: one request's failure is its own, results never depend on batchmates, the
queue counts requests, and requests a browser on another site could forge are refused. Real models, real HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request

import pytest

from servers import a_user, post, start_server


@pytest.fixture(scope="module")
def token_rec(cut_token_model):
    from genrec.infer.recommender import Recommender

    return Recommender(cut_token_model)


def items_of(body: dict) -> list[str]:
    return [r["item_id"] for r in body["recommendations"]]


def check_isolation(rec, bad: list[tuple[str, dict, str]], batcher_failures: int) -> None:
    """Six valid requests (each twice) at once beside three copies of each bad one, two rounds: every valid one
    gets 200 with the items it gets alone, every bad one its own 400; /health counts what the batcher saw."""
    srv, thread, url = start_server(rec, max_batch_size=32, timeout_s=120)
    users = list(rec.known_users())[:6]
    try:
        alone = {}
        for uid in users:
            status, body = post(f"{url}/v1/recommendations", {"user_id": uid, "k": 5})
            assert status == 200, body
            alone[uid] = items_of(body)
        calls = [("/v1/recommendations", {"user_id": uid, "k": 5}, None) for uid in users for _ in range(2)]
        calls += bad * 3
        order = sorted(range(len(calls)), key=lambda i: (i * 7919) % len(calls))  # bad ones spread among good

        def one(i):
            path, body, _ = calls[i]
            return i, post(url + path, body)

        for _ in range(2):
            with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
                answers = dict(pool.map(one, order))
            for i, (status, body) in answers.items():
                path, sent, needle = calls[i]
                if needle is None:
                    assert status == 200, body
                    assert items_of(body) == alone[sent["user_id"]]
                else:
                    assert status == 400 and needle in body["error"]["message"], (sent, body)
        with urllib.request.urlopen(f"{url}/health", timeout=30) as resp:
            health = json.loads(resp.read())
        assert health["failed"] == 2 * 3 * batcher_failures
        assert health["served"] == len(users) + 2 * 2 * len(users) and health["expired"] == 0
    finally:
        srv.should_exit = True
        thread.join(10)


def test_a_bad_request_fails_alone_on_an_item_token_model(token_rec):
    """Bad requests beside good ones on the default kind of model (its request text is matched, so a worded
    request is searched on its own): a malformed message and an unknown item fail alone."""
    check_isolation(token_rec, [
        ("/v1/recommendations", {"history": list(token_rec.catalog)[:1] + ["no such item"], "request": "funny"},
         "unknown item"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]},
         "must be a string"),
    ], batcher_failures=0)


def test_a_bad_request_fails_alone_on_a_title_model(recommender):
    """A context over the prompt budget fails in the model thread; an unknown title before it: neither touches
    its batchmates."""
    uid, _ = a_user(recommender)
    title = recommender.catalog[next(iter(recommender.catalog))]["title"]
    check_isolation(recommender, [
        ("/v1/recommendations", {"user_id": uid, "context": {f"key{i}": "x" * 40 for i in range(300)}},
         "longer than max_prompt_tokens"),
        ("/v1/recommendations", {"history": [title + " (the sequel nobody made)"]}, "unknown item"),
    ], batcher_failures=1)


def test_a_search_does_not_depend_on_the_k_of_its_batchmates(recommender):
    """Title model: a small-k request gets the same items (and scores) whether it is searched alone or queued
    behind and beside a k=100 request (a beam search's width follows k)."""
    from genrec.serve.batcher import Batcher

    uid, items = a_user(recommender)
    reqs = lambda: [recommender_query(uid, items)]  # noqa: E731
    batcher = Batcher(recommender, max_batch=8)
    try:
        alone = {k: batcher.submit(reqs(), k, False, True, 300).result(300)[0] for k in (1, 3)}
        blocker = batcher.submit(reqs() * 2, 20, False, True, 300)  # busy: what follows waits and is batched
        big = batcher.submit(reqs(), 100, False, True, 300)
        small = [batcher.submit(reqs(), k, False, True, 300) for k in (1, 3)]
        blocker.result(300)
        assert len(big.result(300)[0].items) == 100
        for k, fut in zip((1, 3), small):
            got = fut.result(300)[0]
            assert [(r.item_id, r.score) for r in got.items] == \
                [(r.item_id, r.score) for r in alone[k].items]
    finally:
        batcher.close()


def recommender_query(uid, items):
    from genrec.infer.query import Query

    return Query(user_id=uid, history=list(items), seen=set(items))


def test_the_queue_bound_counts_requests_not_jobs(recommender):
    """max_queue=6 while the model thread is busy: a 4-prompt job fits, a second one (8 requests in all) does not,
    though only two jobs would be waiting."""
    from genrec.serve.batcher import Batcher
    from genrec.serve.protocol import APIError

    uid, items = a_user(recommender)
    batcher = Batcher(recommender, max_batch=1)
    try:
        busy = batcher.submit([recommender_query(uid, items)] * 3, 30, False, True, 300, max_queue=6)
        while batcher.waiting():  # until the model thread has taken it (a search of seconds follows)
            time.sleep(0.01)
        first = batcher.submit([recommender_query(uid, items)] * 4, 3, False, True, 300, max_queue=6)
        assert batcher.waiting() >= 4
        with pytest.raises(APIError) as err:
            batcher.submit([recommender_query(uid, items)] * 4, 3, False, True, 300, max_queue=6)
        assert err.value.status == 503 and err.value.code == "queue_full"
        busy.result(300)
        assert len(first.result(300)) == 4 and batcher.waiting() == 0
    finally:
        batcher.close()


def raw_request(url: str, path: str, body: bytes | None, headers: dict, method: str = "POST") -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_cross_site_requests_are_refused(recommender):
    """What a page on another site could send: a form-encoded or text/plain POST (no CORS preflight) is 415, a
    Host header of another name (DNS rebinding) is 400; the same call as JSON to the bound name is 200."""
    srv, thread, url = start_server(recommender, timeout_s=120)
    uid, _ = a_user(recommender)
    body = json.dumps({"user_id": uid, "k": 2}).encode()
    try:
        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            status, resp = raw_request(url, "/v1/recommendations", body, {"Content-Type": media} if media else {})
            assert status == 415 and resp["error"]["code"] == "unsupported_media_type", media
        port = url.rsplit(":", 1)[1]
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
            status, resp = raw_request(url, "/v1/recommendations", body,
                                       {"Content-Type": "application/json", "Host": host})
            assert status == 400 and resp["error"]["code"] == "invalid_host", host
            status, _ = raw_request(url, "/health", None, {"Host": host}, "GET")
            assert status == 400
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            status, resp = raw_request(url, "/v1/recommendations", body,
                                       {"Content-Type": "application/json; charset=utf-8", "Host": host})
            assert status == 200 and len(resp["recommendations"]) == 2
    finally:
        srv.should_exit = True
        thread.join(10)


def test_allowed_hosts_and_the_key_on_docs(recommender, monkeypatch):
    """allowed_hosts adds a name; /docs and /openapi.json need the key like every route but /health and the page;
    the key also comes from GENREC_API_KEY."""
    monkeypatch.setenv("GENREC_API_KEY", "env-key")
    srv, thread, url = start_server(recommender, timeout_s=120, allowed_hosts=["recs.internal"])
    port = url.rsplit(":", 1)[1]
    try:
        status, _ = raw_request(url, "/health", None, {"Host": f"recs.internal:{port}"}, "GET")
        assert status == 200
        for path in ("/docs", "/openapi.json", "/v1/models"):
            req = urllib.request.Request(url + path)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=30)
            assert err.value.code == 401, path
            req = urllib.request.Request(url + path, headers={"Authorization": "Bearer env-key"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200, path
    finally:
        srv.should_exit = True
        thread.join(10)


def test_health_is_503_when_the_model_thread_is_gone_and_limits_without_content_length(recommender):
    """A chunked body (no Content-Length) over max_body_bytes is 413 as it streams in; a request text over
    max_request_chars is 400; once the model thread has stopped, /health answers 503 and requests 503."""
    import http.client

    srv, thread, url = start_server(recommender, timeout_s=120, max_body_bytes=4096, max_request_chars=50)
    try:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.putrequest("POST", "/v1/recommendations")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b'{"request": "' + b"a" * 3000
        for part in (chunk, b"b" * 3000, b'"}'):
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        assert resp.status == 413 and "larger than 4096" in json.loads(resp.read())["error"]["message"]
        conn.close()
        status, body = post(f"{url}/v1/recommendations", {"request": "x" * 51})
        assert status == 400 and "longer than 50 characters" in body["error"]["message"]
        service = srv.config.app.state.service
        service.batcher.close()
        service.batcher.thread.join(30)
        status, body = raw_request(url, "/health", None, {}, "GET")
        assert status == 503 and body["batcher_alive"] is False
        status, body = post(f"{url}/v1/recommendations", {"history": list(recommender.catalog)[:2]})
        assert status == 503 and "not running" in body["error"]["message"]
    finally:
        srv.should_exit = True
        thread.join(10)


def test_a_request_whose_deadline_passes_mid_search_is_expired_not_served(recommender):
    """timeout_s=1 and a k=100 title search of several seconds: the client gets its 408 at the deadline, the
    search runs to its end, and /health counts the request as expired, never as served."""
    srv, thread, url = start_server(recommender, timeout_s=1.0)
    try:
        uid, items = a_user(recommender)
        t0 = time.monotonic()
        status, body = post(f"{url}/v1/recommendations", {"user_id": uid, "k": 100})
        assert status == 408 and time.monotonic() - t0 < 5, body
        deadline = time.monotonic() + 120
        while True:  # until the model thread has finished the search
            health = raw_request(url, "/health", None, {}, "GET")[1]
            if health["expired"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert health["expired"] == 1 and health["served"] == 0 and health["failed"] == 0
    finally:
        srv.should_exit = True
        thread.join(10)
