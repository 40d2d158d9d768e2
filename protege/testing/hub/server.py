"""A Hugging Face Hub replica on 127.0.0.1, reached through `HF_ENDPOINT`.

It speaks the hub's HTTP API as the installed `huggingface_hub` (and so `datasets` and
`transformers`) uses it, for repositories kept as plain folders under one root:

    ROOT/models/<org>/<name>/...      ROOT/datasets/<org>/<name>/...

- `GET /api/{models,datasets}/<id>[/revision/<rev>]`: repo info (`sha`, `siblings`,
  `cardData` for datasets; `blobs=true` adds sizes and LFS entries).
- `GET /api/<type>s/<id>/tree/<rev>[/<path>]?recursive=`: the tree, paginated by cursor with
  a `Link: <...>; rel="next"` header as the hub does (1,000 entries a page, 50 with `expand`).
- `POST /api/<type>s/<id>/paths-info/<rev>` (form `paths=`): entries for the given paths.
- `HEAD`/`GET /[datasets/]<id>/resolve/<rev>/<path>`: the file, with `X-Repo-Commit`,
  `ETag` (the git blob sha1; for LFS files `X-Linked-Etag` = the sha256 and `X-Linked-Size`),
  `Content-Length`, and `Range` requests answered with 206.
- Errors as the hub answers them: a missing repo is 401 with `X-Error-Code: RepoNotFound`
  (the hub does not tell an anonymous caller whether a repo exists), a missing file 404
  `EntryNotFound` (with `X-Repo-Commit`, which the client uses to cache the absence), an
  unknown revision 404 `RevisionNotFound`; each with `X-Error-Message` and a JSON `error`.
- Renamed repos (`t5-small` -> `google-t5/t5-small`) answer 307 with the new location, for
  the API and for file URLs alike.

Files whose names match the hub's default `.gitattributes` LFS patterns (parquet,
safetensors, bin, model ...) are served as LFS files. Every request is logged (`.log`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".parquet", ".safetensors", ".bin", ".model", ".msgpack", ".h5", ".ot", ".arrow")
PAGE, PAGE_EXPANDED = 1000, 50
LAST_MODIFIED = "2024-01-10T12:00:00.000Z"
TYPES = {"models": "model", "datasets": "dataset"}


@dataclass
class Entry:
    path: str
    size: int
    oid: str  # git blob sha1
    sha256: str | None = None  # LFS files only

    def tree_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "file",
            "oid": self.oid,
            "size": self.size,
            "path": self.path,
        }
        if self.sha256:
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return out


@dataclass
class Repo:
    """One repository: its folder, its files and a commit sha derived from their contents."""

    kind: str  # "model" or "dataset"
    repo_id: str
    root: Path
    files: dict[str, Entry] = field(default_factory=dict)
    sha: str = ""

    @classmethod
    def scan(cls, kind: str, repo_id: str, root: Path) -> Repo:
        repo = cls(kind, repo_id, root)
        commit = hashlib.sha1(f"{kind}:{repo_id}".encode())
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            data = p.read_bytes()
            oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            lfs = rel.endswith(LFS_SUFFIXES)
            sha256 = hashlib.sha256(data).hexdigest() if lfs else None
            repo.files[rel] = Entry(rel, len(data), oid, sha256)
            commit.update(f"{rel}:{oid}".encode())
        repo.sha = commit.hexdigest()
        return repo

    def dirs(self) -> set[str]:
        out = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            out |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
        return out

    def entry_json(self, path: str) -> dict[str, Any] | None:
        if path in self.files:
            return self.files[path].tree_json()
        if path in self.dirs():
            oid = hashlib.sha1(f"tree:{self.repo_id}:{path}".encode()).hexdigest()
            return {"type": "directory", "oid": oid, "size": 0, "path": path}
        return None

    def tree(self, path: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{path}/" if path else ""
        names = sorted(self.dirs() | set(self.files))
        out = []
        for name in names:
            if not name.startswith(prefix):
                continue
            if not recursive and "/" in name[len(prefix) :]:
                continue
            out.append(self.entry_json(name))
        # The hub lists folders first, then files.
        return sorted(out, key=lambda e: (e["type"] != "directory", e["path"]))

    def card_data(self) -> dict[str, Any] | None:
        readme = self.root / "README.md"
        if not readme.exists():
            return None
        import yaml

        m = re.match(r"^---\n(.*?)\n---\n", readme.read_text(encoding="utf-8"), flags=re.S)
        return yaml.safe_load(m.group(1)) if m else None

    def info(self, blobs: bool) -> dict[str, Any]:
        org = self.repo_id.split("/")[0]
        siblings = []
        for e in self.files.values():
            s: dict[str, Any] = {"rfilename": e.path}
            if blobs:
                s.update(size=e.size, blobId=e.oid)
                if e.sha256:
                    s["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": 134}
            siblings.append(s)
        out: dict[str, Any] = {
            "_id": hashlib.sha1(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "author": org,
            "sha": self.sha,
            "lastModified": LAST_MODIFIED,
            "createdAt": "2022-03-02T23:29:04.000Z",
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in self.files.values()),
        }
        card = self.card_data()
        if card is not None:
            out["cardData"] = card
        if self.kind == "model":
            out["modelId"] = self.repo_id
            config = self.root / "config.json"
            if config.exists():
                c = json.loads(config.read_text())
                out["config"] = {
                    "architectures": c.get("architectures"),
                    "model_type": c.get("model_type"),
                }
            out["library_name"] = "transformers"
            out["pipeline_tag"] = "text2text-generation"
        return out


class HubReplica:
    """Serve every repository found under `root` on a free port of 127.0.0.1."""

    def __init__(self, root: str | Path, renames: dict[str, str] | None = None):
        self.root = Path(root)
        self.renames = dict(renames or {})  # "models/t5-small" -> "models/google-t5/t5-small"
        self.repos: dict[tuple[str, str], Repo] = {}
        self.log: list[dict[str, Any]] = []
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.rescan()

    def rescan(self) -> None:
        """Read the repositories from disk again (after a test adds or changes one)."""
        repos = {}
        for folder, kind in TYPES.items():
            base = self.root / folder
            for cfg in sorted(base.glob("*/*")) if base.exists() else []:
                if cfg.is_dir():
                    repo_id = cfg.relative_to(base).as_posix()
                    repos[(kind, repo_id)] = Repo.scan(kind, repo_id, cfg)
        self.repos = repos

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> HubReplica:
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> HubReplica:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Answer(Exception):
    """Raised by a route to answer with a status, headers and a body."""

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


def _error(status: int, code: str | None, message: str, **headers: str) -> _Answer:
    h = {"X-Error-Message": message, "Content-Type": "application/json", **headers}
    if code:
        h["X-Error-Code"] = code
    return _Answer(status, json.dumps({"error": message}).encode(), h)


def _json(data: Any, **headers: str) -> _Answer:
    return _Answer(200, json.dumps(data).encode(), {"Content-Type": "application/json", **headers})


API = re.compile(r"^/api/(models|datasets)/(?P<rest>.+)$")
RESOLVE = re.compile(r"^/(?:(?P<folder>datasets)/)?(?P<rest>.+)$")


def _handler(hub: HubReplica) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet: the replica keeps its own log
            pass

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            body = b""
            if method == "POST":
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hub.log.append({"method": method, "path": self.path})
            try:
                raise self._route(method, url.path, query, body)
            except _Answer as a:
                self._send(method, a)

        def _send(self, method: str, a: _Answer) -> None:
            self.send_response(a.status)
            for k, v in a.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", a.headers.get("Content-Length", str(len(a.body))))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(a.body)

        # -- routing ----------------------------------------------------------------------
        def _route(self, method: str, path: str, query: dict, body: bytes) -> _Answer:
            m = API.match(path)
            if m:
                return self._api(m.group(1), m.group("rest"), method, query, body)
            m = RESOLVE.match(path)
            if m and "/resolve/" in m.group("rest"):
                return self._resolve(m.group("folder") or "models", m.group("rest"), method)
            return _error(404, None, "Sorry, we can't find the page you are looking for.")

        def _repo(self, folder: str, rest: str, marker: str) -> tuple[Repo, str]:
            """Split `<id><marker><tail>` into (repo, tail), following renames with a 307."""
            head, sep, tail = rest.partition(marker)
            repo_id = unquote(head.rstrip("/"))
            kind = TYPES[folder]
            repo = hub.repos.get((kind, repo_id))
            if repo is not None:
                return repo, tail if sep else ""
            new = hub.renames.get(f"{folder}/{repo_id}")
            if new is not None:
                prefix = "/api/" if self.path.startswith("/api/") else "/"
                if prefix == "/" and folder == "models":
                    old, target = f"/{repo_id}", f"/{new.split('/', 1)[1]}"
                else:
                    old, target = f"{prefix}{folder}/{repo_id}", f"{prefix}{new}"
                location = target + self.path[len(old) :]
                raise _Answer(
                    307,
                    f"Temporary Redirect. Redirecting to {location}".encode(),
                    {"Location": location},
                )
            raise _error(401, "RepoNotFound", "Repository not found")

        def _revision(self, repo: Repo, rev: str) -> None:
            rev = unquote(rev)
            if rev not in ("main", repo.sha):
                raise _error(
                    404, "RevisionNotFound", f"Invalid rev id: {rev}", **{"X-Repo-Commit": ""}
                )

        def _api(self, folder: str, rest: str, method: str, query: dict, body: bytes) -> _Answer:
            for marker in ("/tree/", "/paths-info/", "/revision/"):
                if marker in rest:
                    repo, tail = self._repo(folder, rest, marker)
                    break
            else:
                repo, tail, marker = self._repo(folder, rest, "\0")[0], "", ""
            if marker == "/revision/" or not marker:
                if marker:
                    self._revision(repo, tail)
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                return _json(repo.info(blobs))
            rev, _, sub = tail.partition("/")
            self._revision(repo, rev)
            if marker == "/paths-info/":
                if method != "POST":
                    return _error(405, None, "Method not allowed")
                paths = parse_qs(body.decode()).get("paths", [])
                found = [repo.entry_json(p.strip("/")) for p in paths]
                return _json([e for e in found if e is not None])
            sub = unquote(sub).strip("/")
            if sub and repo.entry_json(sub) is None:
                return _error(404, "EntryNotFound", f'{sub} does not exist on "{rev}"')
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            expand = query.get("expand", ["false"])[0].lower() == "true"
            entries = repo.tree(sub, recursive)
            size = PAGE_EXPANDED if expand else PAGE
            start = int(query.get("cursor", ["0"])[0] or 0)
            page = entries[start : start + size]
            headers = {}
            if start + size < len(entries):
                q = {k: v[0] for k, v in query.items()} | {"cursor": str(start + size)}
                nxt = (
                    self.path.split("?")[0]
                    + "?"
                    + "&".join(f"{k}={quote(v)}" for k, v in q.items())
                )
                headers["Link"] = f'<{hub.endpoint}{nxt}>; rel="next"'
            return _json(page, **headers)

        def _resolve(self, folder: str, rest: str, method: str) -> _Answer:
            repo, tail = self._repo(folder, rest, "/resolve/")
            rev, _, filename = tail.partition("/")
            self._revision(repo, rev)
            filename = unquote(filename)
            entry = repo.files.get(filename)
            if entry is None:
                raise _error(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": repo.sha})
            headers = {
                "X-Repo-Commit": repo.sha,
                "ETag": f'"{entry.oid}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            if entry.sha256:
                headers["X-Linked-Etag"] = f'"{entry.sha256}"'
                headers["X-Linked-Size"] = str(entry.size)
                headers["ETag"] = f'"{entry.sha256}"'
            if method == "HEAD":
                return _Answer(200, b"", {**headers, "Content-Length": str(entry.size)})
            data = (repo.root / filename).read_bytes()
            rng = self.headers.get("Range")
            if rng:
                m = re.match(r"bytes=(\d*)-(\d*)$", rng.strip())
                if not m or (not m.group(1) and not m.group(2)):
                    return _Answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                if m.group(1):
                    a = int(m.group(1))
                    b = int(m.group(2)) if m.group(2) else len(data) - 1
                else:  # suffix range: the last N bytes
                    a, b = max(0, len(data) - int(m.group(2))), len(data) - 1
                if a >= len(data):
                    return _Answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                b = min(b, len(data) - 1)
                headers["Content-Range"] = f"bytes {a}-{b}/{len(data)}"
                return _Answer(206, data[a : b + 1], headers)
            return _Answer(200, data, headers)

    return Handler
