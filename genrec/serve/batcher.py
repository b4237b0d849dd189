"""The server's dynamic batching: concurrent requests are joined by one thread, which owns the model, into batched
searches; a request whose deadline has passed is dropped before it runs."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from genrec.infer.answer import Recommendation
from genrec.infer.query import Query, Search
from genrec.infer.recommender import Recommender
from genrec.serve.protocol import APIError


def answered(rec: Recommender, requests: list[Query], search: Search) -> list[Recommendation]:
    """The recommender's answer to each request, with the tokens it used (counted here, on the model thread that
    owns the tokenizer)."""
    results = rec.recommend(requests, search, with_usage=True)
    if len(results) != len(requests):
        raise RuntimeError("the search returned fewer results than requests")
    return results


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
            groups: dict[tuple, list[Job]] = {}
            for j in self._live(batch):
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

    def _live(self, batch: list[Job]) -> list[Job]:
        """The jobs to search: not past their deadline (nor cancelled), and each job's prompts good on their own."""
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
        return live

    def _search(self, jobs: list[Job]) -> None:
        """One batched search for jobs of the same settings; each job gets its own results (and usage). Every
        job's answer is built before any future is set, so a failure here leaves every future unset."""
        answers = answered(self.rec, [r for j in jobs for r in j.requests], jobs[0].search)
        pos = 0
        for j in jobs:
            n = len(j.requests)
            if not j.future.done():
                j.future.set_result(answers[pos:pos + n])
            pos += n
            self.counts["served" if time.monotonic() < j.deadline else "expired"] += 1

    def _fail(self, job: Job, exc: Exception) -> None:
        self.counts["failed"] += 1
        if not job.future.done():
            job.future.set_exception(exc)
