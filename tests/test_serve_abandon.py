"""`protege serve` does no work for clients who left, and bounds the work waiting.

A real server (uvicorn on 127.0.0.1) with the tiny trained student, whose model calls are held
at a gate while the test fills the queue: a client that hangs up has its waiting inputs dropped
(never predicted), and a request that would pass `max_queued_inputs` gets 503 + Retry-After.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_util import Server, trained_model

from protege.errors import ProtegeError
from protege.serve.predictor import Predictor
from protege.serve.server import ServeConfig

pytestmark = pytest.mark.slow


class Gated(Predictor):
    """The real student; every model call records its inputs, then waits for `gate` (a model
    busy with a long batch), so the test decides when the queue moves."""

    def __init__(self, base: Predictor):
        super().__init__(base.backend, base.task)
        self.gate = threading.Event()
        self.seen: list[str] = []

    def predict(self, inputs, with_rationale=False, fast=True):
        self.seen.extend(inputs)
        assert self.gate.wait(60), "the test never opened the gate"
        return super().predict(inputs, with_rationale, fast)


@pytest.fixture(scope="module")
def predictor(pytestconfig):
    return Predictor.load(trained_model(pytestconfig))


def raw_post(port: int, inputs: list[str]) -> socket.socket:
    """Send a whole POST /v1/predict on a raw socket (the caller hangs up when it likes)."""
    body = json.dumps({"inputs": inputs}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def wait_for(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_inputs_of_clients_who_hang_up_are_dropped_not_predicted(predictor):
    gated = Gated(predictor)
    with Server(gated, max_wait_ms=0) as s, ThreadPoolExecutor(2) as pool:
        url = s.url + "/v1/predict"
        first = pool.submit(httpx.post, url, json={"inputs": ["a man sleeps"]}, timeout=60)
        wait_for(lambda: gated.seen, "the first model call")  # the model is busy now

        def queued() -> float:
            return s.metrics.sample("protege_queued_inputs")

        waiting = raw_post(s.cfg.port, [f"GONE-LATE {i}" for i in range(5)])
        wait_for(lambda: queued() == 5, "5 inputs queued")
        waiting.close()  # hangs up while its inputs wait
        wait_for(lambda: queued() == 0, "the hung-up client's inputs to be dropped")
        raw_post(s.cfg.port, [f"GONE-EARLY {i}" for i in range(3)]).close()  # at once

        def gone() -> float:
            return sum(
                s.metrics.sample("protege_errors_total", reason=reason) or 0
                for reason in ("abandoned", "disconnected")  # after its body, or during it
            )

        wait_for(lambda: gone() == 2, "both clients counted as gone")
        good = pool.submit(httpx.post, url, json={"inputs": ["two dogs run"]}, timeout=60)
        gated.gate.set()
        assert first.result().status_code == good.result().status_code == 200
        assert [x for x in gated.seen if "GONE" in x] == []
        assert gated.seen == ["a man sleeps", "two dogs run"]
        assert s.metrics.sample("protege_dropped_inputs_total") >= 5
        assert queued() == 0


def test_a_full_queue_answers_503_with_retry_after(predictor):
    gated = Gated(predictor)
    with Server(gated, max_wait_ms=0, max_inputs=4, max_queued_inputs=6) as s:
        url = s.url + "/v1/predict"
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(httpx.post, url, json={"inputs": ["a man sleeps"]}, timeout=60)
            wait_for(lambda: gated.seen, "the first model call")
            four = pool.submit(httpx.post, url, json={"inputs": ["a b"] * 4}, timeout=60)
            wait_for(lambda: s.metrics.sample("protege_queued_inputs") == 4, "4 queued")
            refused = httpx.post(url, json={"inputs": ["c d"] * 3}, timeout=10)
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"] == "server busy: 4 inputs waiting, the limit is 6"
            two = pool.submit(httpx.post, url, json={"inputs": ["e f"] * 2}, timeout=60)
            wait_for(lambda: s.metrics.sample("protege_queued_inputs") == 6, "6 queued")
            gated.gate.set()
            assert [f.result().status_code for f in (first, four, two)] == [200] * 3
        assert s.metrics.sample("protege_errors_total", reason="busy") == 1


def test_the_queue_bound_holds_at_least_one_whole_request():
    with pytest.raises(ProtegeError, match="max_queued_inputs: must be at least max_inputs"):
        ServeConfig(max_inputs=256, max_queued_inputs=100)
