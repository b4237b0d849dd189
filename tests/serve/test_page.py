"""The page `genrec serve` serves at /, in a real headless Chromium against a real server on loopback."""

from __future__ import annotations

import html
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from conftest import require
from servers import a_user, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def chromium() -> str:
    require(CHROMIUM is not None, "Debian's chromium")
    return CHROMIUM


def headless(url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=120000", *extra, url], capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def open_server(recommender):
    srv, thread, url = start_server(recommender, timeout_s=120)
    yield url
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page_server(recommender):
    srv, thread, url = start_server(recommender, timeout_s=120, api_key="page-key")
    yield url
    srv.should_exit = True
    thread.join(10)


def test_page_is_served_without_the_key_and_the_api_is_not(page_server):
    with urllib.request.urlopen(f"{page_server}/", timeout=30) as resp:
        page = resp.read().decode()
    assert resp.status == 200 and "/v1/recommendations" in page and "<script" in page
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # no CDN
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(f"{page_server}/v1/recommendations", data=b"{}"), timeout=30)
    assert err.value.code == 401


def test_page_shows_history_beside_recommendations(chromium, open_server, recommender, tmp_path):
    from genrec.infer.query import Query

    uid, items = a_user(recommender)
    ref = recommender.recommend([Query(user_id=uid, history=items, seen=set(items))], k=5)[0]
    url = f"{open_server}/?user={uid}&k=5"
    p = headless(url, "--dump-dom")
    dom = p.stdout
    assert 'data-done="1"' in dom, (dom[-2000:], p.stderr[-1000:])
    recs = dom.split('id="recs"')[1]
    for pick in ref.items:
        assert html.escape(pick.title, quote=False) in recs
    hist = dom.split('id="hist"')[1].split('id="recs"')[0]
    assert html.escape(recommender.catalog[items[-1]]["title"], quote=False) in hist
    shot = tmp_path / "page.png"
    headless(url, f"--screenshot={shot}", "--window-size=1200,900")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_without_the_key_shows_the_error(chromium, page_server, recommender):
    uid, _ = a_user(recommender)
    dom = headless(f"{page_server}/?user={uid}", "--dump-dom").stdout
    assert 'data-done="error"' in dom and "invalid API key" in dom


def test_page_never_reads_the_key_from_the_url(chromium, page_server, recommender):
    """A key in the address would stay in the browser's history and the server's logs: the page ignores it, so
    the keyed server refuses the call it makes."""
    uid, _ = a_user(recommender)
    dom = headless(f"{page_server}/?user={uid}&key=page-key", "--dump-dom").stdout
    assert 'data-done="error"' in dom and "invalid API key" in dom


@pytest.mark.parametrize("kind", ["talking_model", "cut_token_model"])
def test_page_shows_items_and_reasons_for_titles_and_a_request(chromium, kind, request):
    """A model that ranks and talks, on the page: history titles typed in and a request give the items and the
    reasons the API gives for the same body, each reason under its item. Both kinds: trained with request lines
    and reasons (it writes them), and the default kind (next item only: its request's words are matched, its
    reasons explained)."""
    import json

    from genrec.infer.recommender import Recommender

    rec = Recommender(request.getfixturevalue(kind))
    uid, items = a_user(rec)
    titles = [rec.catalog[i]["title"] for i in items[-2:]]
    srv, thread, url = start_server(rec, timeout_s=120)
    try:
        body = {"history": titles, "request": "something with a twist", "k": 3, "with_reasons": True}
        req = urllib.request.Request(f"{url}/v1/recommendations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            api = json.loads(resp.read())["recommendations"]
        query = urllib.parse.urlencode({"history": "|".join(titles), "request": body["request"], "k": 3,
                                        "reasons": 1})
        dom = headless(f"{url}/?{query}", "--dump-dom").stdout
    finally:
        srv.should_exit = True
        thread.join(10)
    assert 'data-done="1"' in dom, dom[-2000:]
    recs = dom.split('id="recs"')[1]
    assert len(api) == 3 and all(r["reason"] for r in api)
    for r in api:  # in order, each title followed by its own reason
        at = recs.index(html.escape(r["title"], quote=False))
        assert recs.index(f'class="reason">{html.escape(r["reason"], quote=False)}<', at) > at
