"""`python -m protege.testing.hub`: build the replica's repositories and serve them."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from protege.testing.hub import RENAMES, HubReplica, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", help="where the repositories are (built there when missing)")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="protege-hub-"))
    if not (root / "models").exists():
        build(root)
    hub = HubReplica(root, RENAMES).start(args.port)
    print(f"PORT {hub.port}", flush=True)
    print(f"export HF_ENDPOINT={hub.endpoint}  # repositories under {root}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
