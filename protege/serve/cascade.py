"""The cascade: the student answers what it is sure of, the teacher the rest.

`protege serve MODEL_DIR --teacher openai --model M (--target-agreement A | --threshold P)`:
a request whose student confidence is below the threshold goes to the teacher (`relay.py`),
whose answer goes back to the application unchanged and into the store (training data for the
next round). When the teacher cannot answer (outage, quota, the spending cap) the student does,
and a response header says so. `shadow` sends that share of student-answered requests to the
teacher in the background, never delaying the answer, and keeps live agreement in /metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from protege.formats import TaskConfig
from protege.serve.calibrate import ROUGE_AGREE, agrees
from protege.serve.metrics import Metrics
from protege.serve.relay import TeacherRelay

log = logging.getLogger("protege.serve")


@dataclass
class Cascade:
    """A teacher behind the student, and when to ask it."""

    relay: TeacherRelay
    threshold: float
    """Student confidence below this goes to the teacher."""
    shadow: float = 0.0
    """Share of student-answered requests also sent to the teacher, to measure agreement."""
    rouge_cutoff: float = ROUGE_AGREE
    """Text outputs: ROUGE-L F1 at which the student's answer agrees with the teacher's."""
    pending: set[asyncio.Task] = field(default_factory=set)

    def unsure(self, confidence: float | None) -> bool:
        return confidence is None or confidence < self.threshold

    def teacher_saying(self, task: TaskConfig, text: str, schema: dict | None) -> str | None:
        """What the teacher's answer says: its label (read as the `label` recipe reads it) or
        its text (a JSON answer's summary/text property)."""
        if task.type == "classification":
            from protege.generate.recipes import parse_label

            return parse_label(text, "label", task.labels, schema).fields.get("label")
        if schema is not None:
            try:
                obj = json.loads(text)
                return next((str(obj[k]) for k in ("summary", "text", "output") if k in obj), text)
            except (ValueError, TypeError):
                return text
        return text

    def maybe_shadow(self, body: dict[str, Any], task: TaskConfig, pred: dict[str, Any],
                     schema: dict | None, metrics: Metrics) -> None:  # fmt: skip
        """With probability `shadow`, ask the teacher too, in the background."""
        if self.shadow <= 0 or random.random() >= self.shadow:
            return
        task_ = asyncio.ensure_future(self._shadow(body, task, pred, schema, metrics))
        self.pending.add(task_)
        task_.add_done_callback(self.pending.discard)

    async def _shadow(self, body, task, pred, schema, metrics: Metrics) -> None:
        try:
            relayed = await self.relay.answer(body)
        except Exception:  # noqa: BLE001  a shadow check never hurts serving
            log.exception("shadow request failed")
            return
        metrics.teacher_spend(relayed.cost_usd)
        if not relayed.ok:
            return
        text = relayed.payload["choices"][0]["message"]["content"] or ""
        said = self.teacher_saying(task, text, schema)
        metrics.shadow(agrees(task, pred, said, self.rouge_cutoff))

    async def close(self) -> None:
        for t in list(self.pending):
            t.cancel()
        await self.relay.close()
