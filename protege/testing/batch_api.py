"""The replica's Files and Batch API: `/v1/files` and `/v1/batches`, as OpenAI answers them.

    POST /v1/files                 multipart upload (purpose=batch) -> a file object
    GET  /v1/files/{id}            the file object;  GET /v1/files/{id}/content: its bytes
    POST /v1/batches               {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches/{id}          the batch;  POST /v1/batches/{id}/cancel;  GET /v1/batches

A batch goes validating -> in_progress -> finalizing -> completed over `delay` seconds, each
line answered as the chat endpoint would answer it (faults included). Its limits are the real
ones: 50,000 requests and 200 MB per input file, one model per file, unique custom_ids; a file
over them fails validation (status `failed`, `errors.data`). Per-batch faults, taken in order
from `batch_faults`: `failed` (validation fails), `expired` (only the first half of the lines
is run; the rest go to the error file as `batch_expired`); and output that is not what the API
promises, for clients that must survive it: `garbage-line` (the first output line cut in
half), `no-custom-id` (the first line without its `custom_id`), `no-choices` (the first line a
200 whose body has no `choices`). `api_faults` answer one Files/Batches call each, in order,
as `OP:FAULT` (OP: upload, file, content, create, list, retrieve, cancel; FAULT: 400, 500, or
`echo-key`, a 400 repeating the request's Authorization header as some proxies do). A batch
removed from `batches` is one the server no longer knows (404 `batch_not_found`). Output lines:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`; a
request the API refused goes to the error file with its error body and status code.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import time
import uuid
from collections import Counter, deque
from typing import Any

from protege.testing import openai_api as api

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
TERMINAL = ("completed", "failed", "expired", "cancelled")


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """{field name: (filename, bytes)} of a multipart/form-data body."""
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    fields = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


class BatchService:
    """Files and batches held in memory by one replica server."""

    def __init__(self, complete, delay: float = 0.0):
        # complete(body) -> (status, payload bytes): what the chat endpoint answers a body
        self.complete = complete
        self.delay = delay
        self.files: dict[str, dict[str, Any]] = {}
        self.content: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.faults: deque[str] = deque()
        self.api_faults: deque[str] = deque()
        self.upload_delay = 0.0  # seconds an upload takes (a large file on a slow link)
        self.submitted: Counter[str] = Counter()  # custom_id -> batches it was submitted in
        self.tasks: set[asyncio.Task] = set()

    def api_fault(self, op: str, auth: str | None) -> tuple[int, bytes] | None:
        """The next `api_faults` entry's answer if it is for `op` (taken), else None."""
        if not self.api_faults or not self.api_faults[0].startswith(op + ":"):
            return None
        fault = self.api_faults.popleft().partition(":")[2]
        if fault == "echo-key":
            return 400, api.error(f"upstream refused the request (Authorization: {auth})",
                                  "invalid_request_error")  # fmt: skip
        return api.server_error() if fault == "500" else api.bad_request()

    # -- files -------------------------------------------------------------------------------
    def upload(self, content_type: str, body: bytes) -> tuple[int, bytes]:
        fields = parse_multipart(content_type, body)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            return 400, api.error("Missing required parameter: 'file'.", "invalid_request_error",
                                  "file", "missing_required_parameter")  # fmt: skip
        filename, data = fields["file"]
        return 200, json.dumps(self._new_file(data, filename or "upload.jsonl", purpose)).encode()

    def _new_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        self.content[fid] = data
        self.files[fid] = {
            "id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed",
            "expires_at": None, "status_details": None,
        }  # fmt: skip
        return self.files[fid]

    def get_file(self, fid: str, content: bool) -> tuple[int, bytes]:
        if fid not in self.files:
            return 404, api.error(f"No such File object: {fid}", "invalid_request_error", "id")
        return 200, self.content[fid] if content else json.dumps(self.files[fid]).encode()

    # -- batches -----------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> tuple[int, bytes]:
        fid = body.get("input_file_id")
        if fid not in self.files:
            return 404, api.error(f"No such File object: {fid}", "invalid_request_error",
                                  "input_file_id")  # fmt: skip
        if body.get("completion_window") != "24h":
            return 400, api.error("Invalid value for 'completion_window': must be '24h'.",
                                  "invalid_request_error", "completion_window", "invalid_value")  # fmt: skip
        now = int(time.time())
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        batch = {
            "id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
            "input_file_id": fid, "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None,
            "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
            "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"), "model": None, "usage": None,
        }  # fmt: skip
        self.batches[bid] = batch
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return 200, json.dumps(batch).encode()

    def get(self, bid: str) -> tuple[int, bytes]:
        if bid not in self.batches:
            return 404, api.error(f"No batch found with id '{bid}'.", "invalid_request_error",
                                  None, "batch_not_found")  # fmt: skip
        return 200, json.dumps(self.batches[bid]).encode()

    def cancel(self, bid: str) -> tuple[int, bytes]:
        if bid not in self.batches:
            return self.get(bid)
        batch = self.batches[bid]
        if batch["status"] in TERMINAL:
            return 409, api.error(f"Cannot cancel a batch with status '{batch['status']}'.",
                                  "invalid_request_error")  # fmt: skip
        batch.update(status="cancelling", cancelling_at=int(time.time()))
        return 200, json.dumps(batch).encode()

    def list(self, query: dict[str, str]) -> tuple[int, bytes]:
        ordered = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
        ids = [b["id"] for b in ordered]
        start = ids.index(query["after"]) + 1 if query.get("after") in ids else 0
        limit = int(query.get("limit", 20))
        page = ordered[start : start + limit]
        return 200, json.dumps({
            "object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(ordered),
        }).encode()  # fmt: skip

    # -- processing --------------------------------------------------------------------------
    def _validate(self, data: bytes) -> tuple[list[dict[str, Any]], str | None]:
        if len(data) > MAX_BYTES:
            return [], f"Input file is larger than the maximum of {MAX_BYTES} bytes."
        try:
            lines = [json.loads(line) for line in data.splitlines() if line.strip()]
        except ValueError:
            return [], "Input file contains a line that is not valid JSON."
        if len(lines) > MAX_REQUESTS:
            return [], f"Input file contains more than the maximum of {MAX_REQUESTS} requests."
        ids = [line.get("custom_id") for line in lines]
        if len(set(ids)) != len(ids):
            return [], "The custom_id of every request in a batch must be unique."
        models = {line.get("body", {}).get("model") for line in lines}
        if len(models) > 1:
            return [], "Each input file may contain requests for only one model."
        return lines, None

    async def _run(self, batch: dict[str, Any]) -> None:
        step = self.delay / 3
        await asyncio.sleep(step)
        lines, problem = self._validate(self.content[batch["input_file_id"]])
        fault = self.faults.popleft() if self.faults else None
        if fault == "failed":
            problem = "The batch input file failed validation."
        if problem:
            batch.update(status="failed", failed_at=int(time.time()), errors={
                "object": "list",
                "data": [{"code": "invalid_request_file", "message": problem, "line": None,
                          "param": None}],
            })  # fmt: skip
            return
        for line in lines:
            self.submitted[line["custom_id"]] += 1
        batch["request_counts"]["total"] = len(lines)
        batch["model"] = lines[0]["body"].get("model") if lines else None
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        await asyncio.sleep(step)
        run = lines if fault != "expired" else lines[: len(lines) // 2]
        out, err = [], []
        for i, line in enumerate(lines):
            if batch["status"] == "cancelling" or i >= len(run):
                code = "batch_cancelled" if batch["status"] == "cancelling" else "batch_expired"
                err.append({"id": f"batch_req_{uuid.uuid4().hex[:24]}",
                            "custom_id": line["custom_id"], "response": None,
                            "error": {"code": code, "message": "This request could not be "
                                      "executed before the completion window expired."}})  # fmt: skip
                continue
            status, payload = self.complete(line["body"])
            row = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line["custom_id"],
                   "response": {"status_code": status, "request_id": uuid.uuid4().hex,
                                "body": json.loads(payload)}, "error": None}  # fmt: skip
            (out if status == 200 else err).append(row)
            batch["request_counts"]["completed" if status == 200 else "failed"] += 1
            if i % 500 == 499:
                await asyncio.sleep(0)  # let status requests in while a large batch runs
        batch.update(status="finalizing", finalizing_at=int(time.time()))
        await asyncio.sleep(step)

        if out and fault == "no-custom-id":
            del out[0]["custom_id"]
        if out and fault == "no-choices":
            del out[0]["response"]["body"]["choices"]

        def jsonl(rows: list[dict[str, Any]], name: str) -> str | None:
            if not rows:
                return None
            lines = [json.dumps(r) for r in rows]
            if fault == "garbage-line" and rows is out:
                lines[0] = lines[0][: len(lines[0]) // 2]
            data = "".join(line + "\n" for line in lines).encode()
            return self._new_file(data, name, "batch_output")["id"]

        batch["output_file_id"] = jsonl(out, "batch_output.jsonl")
        batch["error_file_id"] = jsonl(err, "batch_errors.jsonl")
        now = int(time.time())
        if batch["status"] == "cancelling":
            batch.update(status="cancelled", cancelled_at=now)
        elif fault == "expired":
            batch.update(status="expired", expired_at=now)
        else:
            batch.update(status="completed", completed_at=now)
