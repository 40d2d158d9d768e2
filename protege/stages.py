"""Running stages once: fingerprints of finished stages (`Stages`), and which process runs
what under `accelerate launch` (`Processes`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from protege.data.io import write_json
from protege.errors import ProtegeError

console = Console(stderr=True, emoji=False)  # "data:train:" is not an emoji


class Stages:
    """The fingerprints of finished stages, kept in RUN_DIR/stages.json (written atomically)."""

    def __init__(self, run_dir: Path, force: bool = False, writer: bool = True):
        self.path = run_dir / "stages.json"
        self.done: dict[str, str] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.force = force
        self.writer = writer  # only the main process writes stages.json
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.incomplete: list[str] = []

    def run(self, name: str, fp: str, outputs: list[Path], fn: Callable[[], Any]) -> bool:
        """Run `fn` unless stage `name` already finished with fingerprint `fp`. True if it ran.
        A stage whose `fn` returns False ran but is not done: it is not recorded."""
        if not self.force and self.done.get(name) == fp and all(p.exists() for p in outputs):
            console.print(f"[dim]= {name}: unchanged, skipped[/dim]")
            self.skipped.append(name)
            return False
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        if fn() is False:
            self.incomplete.append(name)
            console.print(f"[yellow]! {name}: incomplete, not recorded as done[/yellow]")
            return True
        self.done[name] = fp
        if self.writer:
            write_json(self.path, self.done)
        self.ran.append(name)
        console.print(f"[green]✓ {name}[/green] ({time.perf_counter() - start:.1f}s)")
        return True


class Processes:
    """One process, or several under `accelerate launch` (WORLD_SIZE > 1): then only training
    runs in all of them; every other stage runs on the main process while the others wait at a
    barrier, and an error there stops every process."""

    def __init__(self) -> None:
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.main = True
        if self.distributed:
            from accelerate import PartialState

            from protege.train.trainer import cpu_ddp

            # The others wait while the main process pays the teacher: hours, not minutes.
            state = PartialState(cpu=cpu_ddp(), timeout=timedelta(days=7))
            self.main = state.is_main_process

    def main_only(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on the main process; the others wait for it and receive its return value."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None, None]
        error: BaseException | None = None
        if self.main:
            try:
                box[1] = fn()
            except BaseException as e:
                error = e
                box[0] = f"{type(e).__name__}: {e}"
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0] is not None:
            raise ProtegeError(f"stopped: the main process failed ({box[0]})")
        return box[1]

    def end(self) -> None:
        """After every stage succeeded: the processes meet and close their process group."""
        if self.distributed:
            from protege.train.trainer import end_processes

            end_processes()
