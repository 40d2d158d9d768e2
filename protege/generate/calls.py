"""Sending a job's requests to the teacher, online or as batches, with a live progress bar."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.generate.config import GenerateConfig
from protege.teacher.client import CallReport
from protege.teacher.cost import Budget
from protege.teacher.leases import new_run_id, start_run
from protege.teacher.spend import StoreCap
from protege.teacher.store import Answer, TeacherStore


def _sender(mode: str):
    """The function that sends a job in `teacher.mode` (same contract: `client.call_all`)."""
    from protege.teacher.batch import batch_all
    from protege.teacher.client import call_all

    return {"online": call_all, "batch": batch_all}[mode]


def send(
    cfg: GenerateConfig,
    requests: list,
    store: TeacherStore,
    n_cached: int,
    price,
    params: dict[str, Any] | None = None,
    extras: dict[str, Any] | None = None,
    on_ok: Callable[[Answer], None] | None = None,
    rules=None,
) -> CallReport:
    """Send `requests` with a live progress bar (done / cached / failed / cost); `on_ok` is
    told of each good answer as it arrives (the output rows are made while others wait)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from protege.teacher.chat import ChatClient, endpoint

    tcfg = cfg.teacher
    run_id = new_run_id()
    start_run(store, run_id, str(cfg.output))
    cap = StoreCap(store, run_id, tcfg.lease_s)
    budget = Budget(cfg.max_cost, cap=cap if cap.cap is not None else None)
    counts = {"ok": 0, "failed": 0, "skipped": 0, "elsewhere": 0}
    status = {"line": ""}
    total = len(requests) + n_cached
    columns = [
        TextColumn("teacher"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]

    def info() -> str:
        line = (
            f"done {counts['ok'] + n_cached + counts['elsewhere']} · cached {n_cached} · "
            f"failed {counts['failed']} · ${budget.spent:.4f}"
        )
        return f"{line} · {status['line']}" if status["line"] else line

    with Progress(*columns, disable=not cfg.progress) as bar:
        task = bar.add_task("teacher", total=total, completed=n_cached, info=info())

        def on_answer(kind: str, answer: Answer | None) -> None:
            counts[kind] += 1
            bar.update(task, advance=1, info=info())
            if on_ok is not None and kind == "ok" and answer is not None:
                on_ok(answer)

        def progress(line: str) -> None:
            status["line"] = line
            bar.update(task, info=info())

        async def go():
            client = ChatClient(tcfg, base_url, api_key)
            kw = {"run_id": run_id, "params": params, "extras": extras, "progress": progress,
                  "rules": rules}  # fmt: skip
            # answers a full store refuses are saved beside it, else beside the output
            kw["rescue_dirs"] = [Path(str(cfg.output)).parent]
            try:
                return await _sender(tcfg.mode)(
                    requests, tcfg, client, store, budget, on_answer, price, **kw
                )
            finally:
                await client.close()

        try:
            with endpoint(tcfg) as (base_url, api_key):
                report = asyncio.run(go())
        finally:  # online requests sent and never answered (Ctrl-C) stay claimed
            cap.close(budget.reserved if tcfg.mode == "online" else 0.0)
    if cap.refused:
        report.errors["cap"] = cap.refused
    if report.in_batch:  # not a budget matter: say where they are
        report.errors["in_batch"] = (
            f"{report.in_batch} requests wait in a Batch API job another run submitted; "
            "`teacher.mode: batch` collects them (they are not sent online meanwhile)"
        )
    return report
