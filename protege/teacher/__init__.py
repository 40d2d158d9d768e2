"""The teacher: one interface (a chat request in, a stored answer out), three kinds behind it.

openai  any OpenAI-compatible endpoint, through the official SDK (`chat.py`)
local   llama.cpp's server started and stopped by protege (`local.py`), same client
replay  the store only (`importer.py` records answers; `replay.py`: unknown prompts stop)

Every answer lives in the SQLite store (`store.py`) keyed by the canonical request and its
endpoint (`endpoint_ids.py`). A job goes online (`client.py`, paced to the server's stated
limits: `ratelimit.py`) or through the Batch API (`batch.py`, half the price); requests in
flight are leased in the store so no two processes pay for one (`leases.py`); a per-store cap
bounds all spending (`spend.py`).
"""

from protege.teacher.config import TeacherConfig
from protege.teacher.store import TeacherStore, request_key

__all__ = ["TeacherConfig", "TeacherStore", "request_key"]
