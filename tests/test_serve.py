"""`protege serve`: the real server (uvicorn on 127.0.0.1, a free port) with a tiny student."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from click.testing import CliRunner
from serve_util import Server, nli_rows, trained_model

from protege.cli import main
from protege.errors import ProtegeError
from protege.serve.predictor import Predictor
from protege.serve.server import check_key_policy, is_loopback

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def predictor(pytestconfig):
    return Predictor.load(trained_model(pytestconfig))


@pytest.fixture(scope="module")
def server(predictor):
    with Server(predictor, max_body_bytes=20_000, max_input_chars=2_000, max_inputs=50) as s:
        yield s


JSON = {"content-type": "application/json"}


def post(url, body, **kw):
    return httpx.post(url + "/v1/predict", json=body, timeout=30, **kw)


def test_predict_one_and_many(server):
    rows = nli_rows("dev", 5)
    r = post(server.url, {"inputs": [rows[0]]})
    assert r.status_code == 200, r.text
    (one,) = r.json()["predictions"]
    assert one["label"] in ("entailment", "neutral", "contradiction") and "rationale" not in one
    r = post(server.url, {"inputs": rows + ["Premise: a dog. Hypothesis: an animal."]})
    preds = r.json()["predictions"]
    assert len(preds) == 6 and preds[0]["label"] == one["label"]
    bare = post(server.url, {"inputs": rows[0]}).json()["predictions"]  # a bare record
    assert [p["label"] for p in bare] == [one["label"]]


def test_rationale_on_request(server):
    r = post(server.url, {"inputs": nli_rows("dev", 2), "rationale": True})
    assert all(p["rationale"] for p in r.json()["predictions"])


def test_healthz_and_metrics(server):
    h = httpx.get(server.url + "/healthz").json()
    assert h["status"] == "ok" and h["format"] == "label+rationale"
    post(server.url, {"inputs": ["x"]})
    text = httpx.get(server.url + "/metrics").text
    assert 'protege_requests_total{path="/v1/predict",status="200"}' in text
    assert "# TYPE protege_request_latency_seconds histogram" in text
    assert 'protege_batch_size_bucket{le="+Inf"}' in text
    assert "protege_errors_total" in text


@pytest.mark.parametrize(
    "body, status, reason",
    [
        (b"{not json", 400, "body is not valid JSON"),
        (b'{"input": ["x"]}', 422, "missing field 'inputs'"),
        (b'{"inputs": []}', 422, "expected a non-empty list"),
        (b'{"inputs": [3]}', 422, "inputs[0]: expected a record or a string"),
        (b'{"inputs": [{"premise": "a"}]}', 422, "field 'hypothesis': missing"),
        (b'{"inputs": ["x"], "rationale": "yes"}', 422, "expected true or false"),
        (json.dumps({"inputs": ["x" * 3000]}).encode(), 422, "over the limit of 2000"),
        (json.dumps({"inputs": ["x"] * 51}).encode(), 413, "51 inputs, over the limit of 50"),
        (json.dumps({"inputs": ["x " * 15_000]}).encode(), 413, "over the limit of 20000"),
    ],
)
def test_bad_requests_get_a_one_line_reason(server, body, status, reason):
    r = httpx.post(server.url + "/v1/predict", content=body, timeout=30, headers=JSON)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"] and "\n" not in r.json()["error"]


def test_key_policy():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_key_policy("127.0.0.1", None)
    check_key_policy("0.0.0.0", "k")
    with pytest.raises(ProtegeError, match="needs an API key"):
        check_key_policy("0.0.0.0", None)
    r = CliRunner().invoke(main, ["serve", ".", "--host", "0.0.0.0"], env={"PROTEGE_API_KEY": ""})
    assert r.exit_code == 1 and "needs an API key" in r.output


def test_api_key_required_when_set(predictor):
    with Server(predictor, api_key="s3cret") as s:
        body = {"inputs": ["x"]}
        assert post(s.url, body).status_code == 401
        wrong = post(s.url, body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "missing or invalid API key"
        assert post(s.url, body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert post(s.url, body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/healthz").status_code == 200


def test_concurrent_requests_are_micro_batched(predictor):
    with Server(predictor, max_wait_ms=300, max_batch_size=64) as s:
        rows = nli_rows("dev", 12)
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda r: post(s.url, {"inputs": [r]}), rows))
        assert all(r.status_code == 200 for r in results)
        alone = [p["label"] for p in Predictor.predict(predictor, rows)]
        assert [r.json()["predictions"][0]["label"] for r in results] == alone
        n, calls = (s.metrics.sample(f"protege_batch_size_{k}") for k in ("sum", "count"))
        assert n == 12 and calls <= 4, (calls, n)  # 12 requests, few model calls


def test_slow_client_does_not_stall_others(predictor):
    with Server(predictor, body_timeout_s=3) as s:
        slow = socket.create_connection(("127.0.0.1", s.cfg.port))
        slow.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"inputs": ['
        )
        t0 = time.perf_counter()
        assert post(s.url, {"inputs": ["x"]}).status_code == 200
        assert time.perf_counter() - t0 < 2.5  # answered while the slow body is pending
        slow.settimeout(10)
        chunks = []  # headers and body may come in separate packets: read to the close
        while chunk := slow.recv(4096):
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
        slow.close()
        assert reply.startswith("HTTP/1.1 408") and "body not received within 3s" in reply


def test_graceful_shutdown_finishes_in_flight_requests(predictor):
    s = Server(predictor, max_wait_ms=1500).__enter__()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, s.url, {"inputs": nli_rows("dev", 2)})
        time.sleep(0.5)  # the request now waits in the micro-batch window
        stopper = threading.Thread(target=s.stop)
        stopper.start()
        r = pending.result(timeout=30)
        stopper.join(30)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    assert not s.thread.is_alive()
