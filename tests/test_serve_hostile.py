"""`protege serve` against hostile clients: no client can hurt another.

A real server (uvicorn on 127.0.0.1) with a tiny trained student; bad inputs, a failing input
inside a shared micro-batch, a huge request beside a small one, hundreds of half-open
connections, foreign Host headers and cross-origin pages.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from click.testing import CliRunner
from serve_util import Server, nli_rows, trained_model

from protege.cli import main
from protege.serve.connections import RepeatFilter
from protege.serve.origin import host_name
from protege.serve.predictor import Predictor

pytestmark = pytest.mark.slow
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def predictor(pytestconfig):
    return Predictor.load(trained_model(pytestconfig))


def post(url, body, **kw):
    """POST `body` as JSON; escaped, so a lone surrogate goes on the wire as `\\ud800`."""
    content = json.dumps(body)
    return httpx.post(url + "/v1/predict", content=content, headers=JSON, timeout=300, **kw)


def test_bad_inputs_get_422_alone_while_good_clients_are_answered(predictor):
    with Server(predictor, max_wait_ms=200) as s:
        bad = [{"inputs": ["\ud800"]}, {"inputs": ["ok", "   "]}, {"inputs": [["x"]]},
               {"inputs": [{"premise": "\udfff", "hypothesis": "h"}]}]  # fmt: skip
        good = [{"inputs": [r]} for r in nli_rows("dev", 8)]
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda b: post(s.url, b), bad + good))
        assert [r.status_code for r in results] == [422] * 4 + [200] * 8
        assert "lone surrogate" in results[0].json()["error"]
        assert "inputs[1]: empty input" in results[1].json()["error"]


def test_refused_requests_wait_so_a_flood_of_them_is_slow_and_good_ones_are_not(predictor):
    """Each 4xx answer waits `reject_delay_s` (an async wait): 8 clients sending bad requests
    back to back get a few answers a second each, while a good request is answered at once."""
    with Server(predictor, reject_delay_s=0.5) as s, httpx.Client(timeout=30) as c:
        url = s.url + "/v1/predict"
        c.post(url, json={"inputs": [nli_rows("dev", 1)[0]]})  # warm the model

        def flood(_) -> int:
            end, n = time.perf_counter() + 2.0, 0
            with httpx.Client(timeout=30) as mine:
                while time.perf_counter() < end:
                    assert (
                        mine.post(url, content=b'{"inputs": [""]}', headers=JSON).status_code == 422
                    )
                    n += 1
            return n

        with ThreadPoolExecutor(8) as pool:
            floods = pool.map(flood, range(8))
            time.sleep(0.5)
            t0 = time.perf_counter()
            good = c.post(url, json={"inputs": [nli_rows("dev", 1)[0]]})
            good_s = time.perf_counter() - t0
            counts = list(floods)
        assert good.status_code == 200 and good_s < 0.5, good_s
        assert all(n <= 5 for n in counts), counts  # 2 s at one answer per 0.5 s each


class Poisoned(Predictor):
    """The real student, failing on any input holding POISON (an input the model rejects)."""

    def predict(self, inputs, with_rationale=False, fast=True):
        if any("POISON" in x for x in inputs):
            raise ValueError("tokenizer exploded at /secret/path/model.bin")
        return super().predict(inputs, with_rationale, fast)


def test_a_failing_input_fails_only_its_own_request_and_leaks_nothing(predictor, caplog):
    p = Poisoned(predictor.backend, predictor.task)
    with Server(p, max_wait_ms=300, max_batch_size=64) as s:
        bodies = [{"inputs": ["POISON"]}] + [{"inputs": [r]} for r in nli_rows("dev", 6)]
        with caplog.at_level(logging.ERROR, "protege.serve"):
            with ThreadPoolExecutor(7) as pool:
                results = list(pool.map(lambda b: post(s.url, b), bodies))
        assert [r.status_code for r in results] == [500] + [200] * 6
        error = results[0].json()["error"]
        assert error.startswith("internal error (id ") and "secret" not in error
        assert (
            s.metrics.sample("protege_batch_size_count") >= 2
        )  # shared batch failed, then one by one
        error_id = error.split("id ")[1].rstrip(")")
        assert any(error_id in r.getMessage() for r in caplog.records)


def test_deep_json_and_disconnects_get_one_line_not_a_traceback(predictor, caplog):
    with Server(predictor) as s, caplog.at_level(logging.WARNING):
        deep = b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        r = httpx.post(s.url + "/v1/predict", content=deep, headers=JSON, timeout=30)
        assert r.status_code == 400 and r.json()["error"] == "body is nested too deeply"
        sock = socket.create_connection(("127.0.0.1", s.cfg.port))
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"in")  # fmt: skip
        sock.close()  # gone mid-body
        time.sleep(0.5)
        assert post(s.url, {"inputs": ["x"]}).status_code == 200
        assert s.metrics.sample("protege_errors_total", reason="disconnected") == 1
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_small_request_waits_at_most_a_batch_behind_a_large_one(predictor):
    rows = nli_rows("dev", 16)
    short = Predictor(predictor.backend, predictor.task, max_new_tokens=32)
    with Server(short, max_batch_size=8, max_batch_tokens=300) as s:  # ~4 rationales a batch
        post(s.url, {"inputs": rows[:2], "rationale": True})  # warm up

        def timed(body):
            t0 = time.perf_counter()
            r = post(s.url, body)
            return r, time.perf_counter() - t0

        with ThreadPoolExecutor(2) as pool:
            big = pool.submit(timed, {"inputs": rows * 3, "rationale": True})  # 48: 12 batches
            time.sleep(0.2)
            small = pool.submit(timed, {"inputs": rows[:1], "rationale": True})
            (rb, tb), (rs, ts) = big.result(), small.result()
    assert rb.status_code == rs.status_code == 200 and len(rb.json()["predictions"]) == 48
    assert ts < tb / 3, (ts, tb)  # it waits for at most the batch running when it came


def test_half_open_connections_are_capped_and_timed_out(predictor):
    with Server(predictor, max_connections=100, header_timeout_s=3.0) as s:
        hostile = []
        for _ in range(300):  # three times the cap, one byte each, never finished
            c = socket.create_connection(("127.0.0.1", s.cfg.port))
            c.sendall(b"P")
            hostile.append(c)
        time.sleep(1.1)  # held a while: the oldest may now be pushed out by a newcomer
        t0 = time.perf_counter()
        assert post(s.url, {"inputs": ["x"]}).status_code == 200
        assert time.perf_counter() - t0 < 5
        time.sleep(3.0)  # past the header timeout: every hostile connection was closed
        closed = 0
        for c in hostile:
            c.settimeout(2)
            try:
                data = c.recv(1000)  # b"" once closed (evicted, timed out), or a 503 first
            except ConnectionResetError:
                data = b""
            closed += data == b"" or data.startswith(b"HTTP/1.1 503")
            c.close()
        assert closed == 300


def test_repeated_log_lines_are_folded():
    flt = RepeatFilter(interval_s=60)
    records = [logging.LogRecord("uvicorn.error", 30, "", 0, "Invalid HTTP request received.",
                                 None, None) for _ in range(1000)]  # fmt: skip
    assert sum(flt.filter(r) for r in records) == 1


def test_host_and_origin_checks(predictor):
    assert host_name("[::1]:8000") == "::1" and host_name("Localhost:80") == "localhost"
    body = json.dumps({"inputs": ["x"]})
    with Server(predictor, allowed_hosts=["box.lan"]) as s:
        url = s.url + "/v1/predict"
        assert httpx.post(url, content=body, headers=JSON).status_code == 200
        rebound = httpx.post(url, content=body, headers={**JSON, "host": "evil.example"})
        assert rebound.status_code == 421 and "--allowed-host" in rebound.json()["error"]
        assert httpx.post(url, content=body, headers={**JSON, "host": "box.lan:8000"}).is_success
        page = httpx.post(url, content=body, headers={**JSON, "origin": "https://evil.example"})
        assert page.status_code == 403
        simple = httpx.post(url, content=body, headers={"content-type": "text/plain"})
        assert simple.status_code == 415
    with Server(predictor, cors_origins=["https://app.example"]) as s:
        url = s.url + "/v1/predict"
        origin = {"origin": "https://app.example"}
        pre = httpx.options(url, headers={**origin, "access-control-request-method": "POST",
                                          "access-control-request-headers": "content-type"})  # fmt: skip
        assert pre.status_code == 200
        r = httpx.post(url, content=body, headers={**JSON, **origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin["origin"]


def test_api_key_from_a_file_and_a_warning_for_the_flag(tmp_path, pytestconfig):
    model = str(trained_model(pytestconfig))
    key_file = tmp_path / "key"
    key_file.write_text("")
    r = CliRunner().invoke(main, ["serve", model, "--api-key-file", str(key_file)])
    assert r.exit_code == 1 and "no key on its first line" in r.output
    r = CliRunner().invoke(main, ["serve", model, "--api-key", "k" * 20, "--max-batch-size", "0"])
    assert "visible to every user in `ps`" in r.output and "max_batch_size" in r.output
    r = CliRunner().invoke(main, ["serve", model, "--port", "99999"])
    assert r.exit_code == 2 and "99999" in r.output and "Traceback" not in r.output
