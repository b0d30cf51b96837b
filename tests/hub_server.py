"""A loopback stand-in for the Hugging Face Hub, so tests can run the real client code paths offline.

Test infrastructure, not part of the installed package: it accepts writes with a fixed token, so it listens on
loopback addresses only (any other host is refused). The tests use it through the `hub` fixture of conftest.py.

    with LocalHub(tmp_path / "hub") as hub:
        hub.patch_env(monkeypatch)              # or: with hub.patched(): ...
        create_repo("local-user/tiny")
        model.push_to_hub("local-user/tiny")
        AutoModel.from_pretrained("local-user/tiny")
        assert hub.count("GET", "/resolve/") == ...

    python tests/hub_server.py --storage DIR [--port N]     (manual use, subprocess tests)

Standard library only (`http.server`, `json`, `hashlib`). The routes mirror what huggingface_hub 2.x, transformers
5.x and datasets 5.x call; each was checked against their source:

    GET  /api/whoami-v2
    POST /api/repos/create                  (409 + the repo url when it exists: the client's `exist_ok` needs both)
    DEL  /api/repos/delete
    POST /api/validate-yaml                 (only checks that a YAML front matter block is closed)
    GET  /api/{models,datasets,spaces}/{id}[/revision/{rev}]     (`sha`, `siblings`; `?blobs=true` adds sizes, LFS)
    GET  /api/{type}s/{id}/tree/{rev}[/{path}]  (?recursive, ?expand; folders and files; no pagination)
    POST /api/{type}s/{id}/paths-info/{rev}
    POST /api/{type}s/{id}/preupload/{rev}  ("regular" or "lfs": binary, > 10 MB or an LFS suffix such as .parquet)
    POST /api/{type}s/{id}/commit/{rev}     (NDJSON: header/file/lfsFile/deletedFile/deletedFolder; parentCommit)
    GET  /api/{type}s/{id}/commits/{rev}, /api/{type}s/{id}/refs
    POST/DELETE /api/{type}s/{id}/branch/{branch}
    POST /[datasets/|spaces/]{id}.git/info/lfs/objects/batch   (LFS "basic" transfer; hrefs point back here)
    PUT  /_localhub/lfs/{sha256}, POST /_localhub/lfs/{sha256}/verify
    GET/HEAD /[datasets/|spaces/]{id}/resolve/{rev}/{path}      (X-Repo-Commit, ETag, X-Linked-*; Range -> 206/416)
    GET  /_datasets-server/...              (always 404: no Parquet export, so `datasets` reads the repo's files)

Revisions: branch names, full commit ids and unambiguous prefixes of 7+ hex digits. Not implemented (answered with
501 or 404, never faked): pull requests (`create_pr=True`), tags, Xet, LFS multipart, pagination, gated repos.
Anything without a route answers 404, is logged as a warning and listed in `LocalHub.unhandled`, so a client feature
that needs a new route shows up instead of failing obscurely.

Errors carry the `X-Error-Code` header the client maps to exceptions: `RepoNotFound` -> RepositoryNotFoundError,
`RevisionNotFound` -> RevisionNotFoundError, `EntryNotFound` -> (Remote)EntryNotFoundError.

Storage (under `storage_dir`; a new server on the same folder reopens the repos):

    blobs/git/{git-oid}                  content of regular files (git blob sha1)
    blobs/lfs/{sha256}                   content of LFS files
    repos/{models,datasets,spaces}/{namespace}/{name}/repo.json   branches + every commit with its full file list
    repos/.../{name}/main/...            checkout of the `main` branch (hard links), for people to look at

Client quirks that `LocalHub.patch_env` / `LocalHub.patched` take care of (see `env` and `_client_patches`):

- huggingface_hub, transformers and datasets read `HF_ENDPOINT`, `HF_HOME`, offline and Xet settings once, at import
  time: `huggingface_hub.constants.ENDPOINT`/`HUGGINGFACE_CO_URL_TEMPLATE`/`HF_HUB_CACHE`/..., the module-level
  `HfApi` behind `create_repo`/`upload_file`/..., the cached `HfFileSystem` instances, the `HfApi` that
  `transformers.utils.hub.hf_api()` caches, `transformers.dynamic_module_utils.HF_MODULES_CACHE` (where
  trust_remote_code modules go), `datasets.config.HF_ENDPOINT`/`HF_DATASETS_CACHE`/... Setting environment variables
  in a running process is therefore not enough: those attributes are patched too, and restored afterwards.
- `HF_HUB_DISABLE_XET=1`: with hf_xet installed, uploads would otherwise go to a Xet server that is not there.
- `DISABLE_SAFETENSORS_CONVERSION=1` (transformers would ask the Hub's conversion bot about `.bin` checkpoints) and
  `HF_UPDATE_DOWNLOAD_COUNTS=0` (datasets pings an S3 bucket on each Hub load).
- datasets asks the dataset viewer at `datasets-server.<endpoint host>`, a host no resolver knows; the patched
  session sends those requests to `/_datasets-server/` here instead.
- huggingface_hub's shared HTTP client has no timeout; the patched one has 60 s and refuses every host but this hub
  (`HubEscapeError`, listed in `LocalHub.blocked`), so a leak to huggingface.co fails at once and visibly.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import ipaddress
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

DEFAULT_USER = "local-user"
DEFAULT_TOKEN = "hf_localhub_not_a_real_token"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# Like the Hub: files above 10 MB, binary files, and the suffixes of the default .gitattributes go through LFS.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model", ".msgpack",
    ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar", ".safetensors",
    ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff",
    ".mp3", ".wav", ".flac", ".ogg", ".mp4",
)
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SPECIAL_REF = re.compile(r"^refs/(convert|pr)/")
CHUNK = 256 * 1024


class HubError(Exception):
    """An error answer: HTTP status, the Hub's `X-Error-Code` (what the client maps to an exception) and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body or {}


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as `oid`/`blobId` and as ETag of regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _is_binary(sample: bytes) -> bool:
    if b"\0" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        # The 512-byte sample may end in the middle of a multi-byte character.
        return not (error.reason == "unexpected end of data" and error.start >= len(sample) - 3)
    return False


def upload_mode(path: str, size: int, sample: bytes) -> str:
    """The Hub's choice between a regular git upload and an LFS upload for one file."""
    if size == 0:
        return "regular"
    if size >= LFS_SIZE_THRESHOLD or path.lower().endswith(LFS_SUFFIXES) or _is_binary(sample):
        return "lfs"
    return "regular"


def _check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..", ".git") for part in parts):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


# --------------------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------------------
class RepoStore:
    """Repositories, commits and file contents on disk. All methods are thread-safe (one lock; repos are tiny)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for sub in ("blobs/git", "blobs/lfs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._counter = 0

    # -- paths ---------------------------------------------------------------------------------------------------
    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        namespace, _, name = repo_id.partition("/")
        if repo_type not in URL_PREFIXES or not (NAME_PATTERN.match(namespace) and NAME_PATTERN.match(name)):
            raise HubError(404, f"Repository not found: {repo_type} {repo_id!r} is not a valid repo id",
                           "RepoNotFound")
        return self.root / "repos" / f"{repo_type}s" / namespace / name

    def lfs_path(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HubError(400, f"Invalid LFS oid {sha256!r}: expected a sha256 in lowercase hex")
        return self.root / "blobs" / "lfs" / sha256

    def blob_path(self, entry: dict) -> Path:
        if entry["lfs"]:
            return self.lfs_path(entry["lfs"]["sha256"])
        return self.root / "blobs" / "git" / entry["oid"]

    def tmp_file(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.root / "tmp")

    # -- repos ---------------------------------------------------------------------------------------------------
    def load(self, repo_type: str, repo_id: str) -> dict:
        path = self.repo_dir(repo_type, repo_id) / "repo.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id!r}", "RepoNotFound") from None

    def _save(self, repo: dict) -> None:
        folder = self.repo_dir(repo["type"], repo["id"])
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "repo.json.tmp"
        tmp.write_text(json.dumps(repo, indent=1))
        os.replace(tmp, folder / "repo.json")

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (self.repo_dir(repo_type, repo_id) / "repo.json").is_file()

    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> bool:
        """Create the repo with an initial commit holding `.gitattributes` (as the Hub does). False if it exists."""
        with self.lock:
            if self.exists(repo_type, repo_id):
                return False
            repo = {"type": repo_type, "id": repo_id, "private": private, "createdAt": _now(), "branches": {},
                    "commits": {}}
            self._save(repo)
            self.commit(repo_type, repo_id, "main", [("file", ".gitattributes", GITATTRIBUTES.encode())],
                        title="initial commit", author=author)
            return True

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.load(repo_type, repo_id)
            shutil.rmtree(self.repo_dir(repo_type, repo_id))

    # -- revisions -----------------------------------------------------------------------------------------------
    def resolve(self, repo: dict, revision: str | None) -> str:
        """Commit id of a branch name (`main`, `refs/heads/x`), a full commit id or an unambiguous prefix (>= 7)."""
        revision = revision or "main"
        branch = revision.removeprefix("refs/heads/")
        if branch in repo["branches"]:
            return repo["branches"][branch]
        if revision in repo["commits"]:
            return revision
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            matches = [sha for sha in repo["commits"] if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def files(repo: dict, commit: str) -> dict[str, dict]:
        return repo["commits"][commit]["files"]

    def history(self, repo: dict, commit: str) -> list[str]:
        """Commit ids from `commit` back to the first one (first parents only)."""
        out = []
        while commit:
            out.append(commit)
            parents = repo["commits"][commit]["parents"]
            commit = parents[0] if parents else None
        return out

    def last_commit(self, repo: dict, commit: str, path: str, is_dir: bool) -> dict:
        """The most recent commit (from `commit` back) that changed `path` (a file, or anything under a folder)."""

        def state(sha: str | None) -> Any:
            if sha is None:
                return None
            files = self.files(repo, sha)
            if not is_dir:
                return files.get(path)
            prefix = path + "/" if path else ""
            return sorted((p, e["oid"]) for p, e in files.items() if p.startswith(prefix))

        history = self.history(repo, commit)
        for sha, parent in zip(history, history[1:] + [None]):
            if state(sha) != state(parent):
                break
        info = repo["commits"][sha]
        return {"id": sha, "title": info["title"], "date": info["date"]}

    # -- commits -------------------------------------------------------------------------------------------------
    def store_regular(self, data: bytes) -> dict:
        oid = git_blob_oid(data)
        path = self.root / "blobs" / "git" / oid
        if not path.exists():
            fd, tmp = self.tmp_file()
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(tmp, path)
        return {"oid": oid, "size": len(data), "lfs": None}

    def lfs_entry(self, sha256: str, size: int | None) -> dict:
        path = self.lfs_path(sha256)
        if not path.is_file():
            raise HubError(400, f"Your push was rejected because an LFS pointer pointed to a file that does not "
                                f"exist (sha256 {sha256}). Upload it through the LFS batch API first.")
        actual = path.stat().st_size
        if size is not None and size != actual:
            raise HubError(400, f"LFS object {sha256} has {actual} bytes, the commit says {size}.")
        pointer = LFS_POINTER.format(sha256=sha256, size=actual).encode()
        return {"oid": git_blob_oid(pointer), "size": actual,
                "lfs": {"sha256": sha256, "pointerSize": len(pointer)}}

    def commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        operations: list[tuple],
        *,
        title: str,
        message: str = "",
        author: str = DEFAULT_USER,
        parent_commit: str | None = None,
    ) -> str:
        """Apply operations to the head of `branch` and return the new commit id.

        Operations: ("file", path, bytes), ("lfsFile", path, sha256, size | None), ("deletedFile", path),
        ("deletedFolder", path).
        """
        with self.lock:
            repo = self.load(repo_type, repo_id)
            branch = branch.removeprefix("refs/heads/")
            if repo["commits"] and branch not in repo["branches"]:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to an existing branch; create it "
                                    f"first with create_branch)", "RevisionNotFound")
            parent = repo["branches"].get(branch)
            if parent_commit is not None and not (parent and parent.startswith(parent_commit)):
                raise HubError(412, f"A commit has happened since {parent_commit}. Please refresh and try again.")
            files = dict(self.files(repo, parent)) if parent else {}
            for operation in operations:
                kind = operation[0]
                # Folder deletions come with a trailing "/" from the client.
                path = _check_path(operation[1].rstrip("/") if kind == "deletedFolder" else operation[1])
                if kind == "file":
                    files[path] = self.store_regular(operation[2])
                elif kind == "lfsFile":
                    files[path] = self.lfs_entry(operation[2], operation[3])
                elif kind == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif kind == "deletedFolder":
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    raise HubError(400, f"Unknown commit operation {kind!r}")
            self._counter += 1
            date = _now()
            record = {"parents": [parent] if parent else [], "title": title, "message": message, "date": date,
                      "author": author, "files": dict(sorted(files.items()))}
            seed = json.dumps([record, repo_type, repo_id, self._counter, time.time_ns()], sort_keys=True)
            sha = hashlib.sha1(seed.encode()).hexdigest()
            repo["commits"][sha] = record
            repo["branches"][branch] = sha
            self._save(repo)
            if branch == "main":
                self._checkout_main(repo_type, repo_id, record["files"])
            return sha

    def create_branch(self, repo: dict, branch: str, starting_point: str | None) -> None:
        with self.lock:
            repo = self.load(repo["type"], repo["id"])
            if branch in repo["branches"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo["branches"][branch] = self.resolve(repo, starting_point)
            self._save(repo)

    def delete_branch(self, repo: dict, branch: str) -> None:
        with self.lock:
            repo = self.load(repo["type"], repo["id"])
            if branch == "main" or branch not in repo["branches"]:
                raise HubError(400 if branch == "main" else 404, f"Cannot delete branch {branch!r}")
            del repo["branches"][branch]
            self._save(repo)

    def _checkout_main(self, repo_type: str, repo_id: str, files: dict[str, dict]) -> None:
        """Mirror `main` into `{repo}/main/` with hard links (copies where links are impossible)."""
        target = self.repo_dir(repo_type, repo_id) / "main"
        shutil.rmtree(target, ignore_errors=True)
        for path, entry in files.items():
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.blob_path(entry), destination)
            except OSError:
                shutil.copyfile(self.blob_path(entry), destination)


# --------------------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestRecord:
    """One request the hub answered (for tests to count, e.g. that a second download used the cache)."""

    method: str
    path: str
    status: int
    range: str | None = None


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, hub: LocalHub):
        self.hub = hub
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # A client hanging up mid-response is routine (e.g. a range reader that has what it needs).
        logger.debug("LocalHub: connection from %s ended with an error", client_address, exc_info=True)

    def close_open_connections(self) -> None:
        """End kept-alive connections so that no handler thread serves requests after `stop()`."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the clients reuse connections
    timeout = 30  # socket timeout: an idle or stuck client never pins a thread for long
    server: _HubHTTPServer
    server_version = "LocalHub/1.0"

    # ---- plumbing -------------------------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        logger.debug("LocalHub: " + format, *args)

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    @property
    def store(self) -> RepoStore:
        return self.server.hub.store

    @property
    def endpoint(self) -> str:
        # Links we hand out (LFS upload hrefs, repo urls) use the host the client used to reach us.
        return f"http://{self.headers.get('Host') or self.hub.endpoint.split('://', 1)[1]}"

    def _dispatch(self) -> None:
        self._status = 0
        self._body_consumed = False
        split = urlsplit(self.path)
        self.query = parse_qs(split.query, keep_blank_values=True)
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        if segments and segments[-1] == "":
            segments.pop()
        try:
            handler, args = self._route(segments)
            handler(*args)
        except HubError as error:
            self._error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up, e.g. a range reader that has what it needs
        except Exception as error:  # a bug here must answer, not leave the client waiting
            logger.exception("LocalHub: %s %s failed", self.command, self.path)
            if self._status:  # the answer had started: only closing the connection tells the client
                self.close_connection = True
            else:
                self._error(HubError(500, f"LocalHub internal error: {type(error).__name__}: {error}"))
        finally:
            if not self._body_consumed and self.command in ("POST", "PUT", "DELETE"):
                self.close_connection = True  # unread body would corrupt the next request on this connection
            self.hub._record(RequestRecord(self.command, self.path, self._status, self.headers.get("Range")))

    def _route(self, s: list[str]) -> tuple[Callable, tuple]:
        method = self.command
        if s[:1] == ["api"]:
            if s == ["api", "whoami-v2"] and method == "GET":
                return self.whoami, ()
            if s == ["api", "repos", "create"] and method == "POST":
                return self.create_repo, ()
            if s == ["api", "repos", "delete"] and method == "DELETE":
                return self.delete_repo, ()
            if s == ["api", "validate-yaml"] and method == "POST":
                return self.validate_yaml, ()
            if len(s) >= 4 and s[1] in REPO_TYPES:
                repo_type, repo_id, rest = REPO_TYPES[s[1]], f"{s[2]}/{s[3]}", s[4:]
                action = rest[0] if rest else None
                if action is None and method == "GET":
                    return self.repo_info, (repo_type, repo_id, None)
                if action == "revision" and len(rest) > 1 and method == "GET":
                    return self.repo_info, (repo_type, repo_id, "/".join(rest[1:]))
                if action == "tree" and len(rest) > 1 and method == "GET":
                    revision, path = self._split_revision(rest[1:])
                    return self.tree, (repo_type, repo_id, revision, "/".join(path))
                simple = {("paths-info", "POST"): self.paths_info, ("preupload", "POST"): self.preupload,
                          ("commit", "POST"): self.commit, ("commits", "GET"): self.commits}
                if (action, method) in simple and len(rest) > 1:
                    return simple[action, method], (repo_type, repo_id, "/".join(rest[1:]))
                if action == "refs" and len(rest) == 1 and method == "GET":
                    return self.refs, (repo_type, repo_id)
                if action == "branch" and len(rest) > 1 and method in ("POST", "DELETE"):
                    return self.branch, (repo_type, repo_id, "/".join(rest[1:]))
        elif s[:1] == ["_datasets-server"]:
            return self.dataset_viewer, ()
        elif s[:2] == ["_localhub", "lfs"] and len(s) >= 3:
            if len(s) == 3 and method == "PUT":
                return self.lfs_upload, (s[2],)
            if s[3:] == ["verify"] and method == "POST":
                return self.lfs_verify, (s[2],)
        else:
            repo_type = "model"
            if s[:1] in (["datasets"], ["spaces"]):
                repo_type, s = REPO_TYPES[s[0]], s[1:]
            if len(s) >= 3 and s[1].endswith(".git") and s[2:] == ["info", "lfs", "objects", "batch"]:
                if method == "POST":
                    return self.lfs_batch, (repo_type, f"{s[0]}/{s[1].removesuffix('.git')}")
            if len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
                revision, path = self._split_revision(s[3:])
                if path:
                    return self.resolve, (repo_type, f"{s[0]}/{s[1]}", revision, "/".join(path))
        return self.unhandled, ()

    @staticmethod
    def _split_revision(parts: list[str]) -> tuple[str, list[str]]:
        # HfFileSystem leaves special refs ("refs/convert/parquet", "refs/pr/1") unquoted in URLs.
        if len(parts) >= 3 and SPECIAL_REF.match("/".join(parts[:3]) + "/"):
            return "/".join(parts[:3]), parts[3:]
        return parts[0], parts[1:]

    # ---- bodies ---------------------------------------------------------------------------------------------
    def _body_chunks(self) -> Iterator[bytes]:
        """The request body, de-chunked if sent with `Transfer-Encoding: chunked` (httpx does for file objects)."""
        self._body_consumed = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, CHUNK))
                    if not data:
                        raise HubError(400, "Truncated chunked request body")
                    remaining -= len(data)
                    yield data
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, CHUNK))
                if not data:
                    raise HubError(400, "Truncated request body")
                remaining -= len(data)
                yield data

    def _body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _json_body(self) -> Any:
        body = self._body()
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Request body is not valid JSON: {error}") from None

    # ---- answers --------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, error: HubError) -> None:
        if not self._body_consumed and self.command in ("POST", "PUT", "DELETE"):
            self.close_connection = True
        headers = {"X-Error-Message": " ".join(error.message.split()).encode("latin-1", "replace").decode("latin-1"),
                   **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        logger.debug("LocalHub: %s %s -> %d %s", self.command, self.path, error.status, error.message)
        self._json({"error": error.message, **error.body}, error.status, headers)

    def dataset_viewer(self) -> None:
        raise HubError(404, "LocalHub has no dataset viewer: no Parquet export, no /info (read the repo files)",
                       "ResponseNotFound")

    def unhandled(self) -> None:
        self.hub._unhandled(f"{self.command} {self.path}")
        raise HubError(404, f"LocalHub does not implement {self.command} {urlsplit(self.path).path}")

    # ---- auth -----------------------------------------------------------------------------------------------
    def _user(self) -> str | None:
        """The user the request's token authenticates, None without token; 401 for a wrong token."""
        header = self.headers.get("Authorization", "")
        if not header:
            return None
        if self.hub.token is not None and header != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.user

    def _require_user(self) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to do this (send `Authorization: Bearer <token>`).")
        return user

    def _readable_repo(self, repo_type: str, repo_id: str) -> dict:
        repo = self.store.load(repo_type, repo_id)
        if repo["private"] and self._user() is None:
            raise HubError(401, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _writable_repo(self, repo_type: str, repo_id: str) -> tuple[dict, str]:
        user = self._require_user()
        return self.store.load(repo_type, repo_id), user

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"

    # ---- account and repos ----------------------------------------------------------------------------------
    def whoami(self) -> None:
        user = self._require_user()
        self._json({"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
                    "fullname": user, "email": f"{user}@localhost", "emailVerified": True, "isPro": False,
                    "orgs": [], "auth": {"type": "access_token",
                                         "accessToken": {"displayName": "LocalHub", "role": "write"}}})

    def create_repo(self) -> None:
        user = self._require_user()
        payload = self._json_body()
        name, namespace = payload.get("name"), payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}, expected one of {sorted(URL_PREFIXES)}")
        if not (isinstance(name, str) and NAME_PATTERN.match(name) and NAME_PATTERN.match(namespace)):
            raise HubError(400, f"Invalid repo name {namespace}/{name}")
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility", "public") != "public" or bool(payload.get("private"))
        url = self._repo_url(repo_type, repo_id)
        if not self.store.create_repo(repo_type, repo_id, private, user):
            # With exist_ok=True the client reads the repo url from this 409 answer.
            raise HubError(409, f"You already created this {repo_type} repo: {repo_id}", body={"url": url})
        self._json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def delete_repo(self) -> None:
        user = self._require_user()
        payload = self._json_body()
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        self.store.delete_repo(payload.get("type") or "model", repo_id)
        self._json({})

    def validate_yaml(self) -> None:
        content = self._json_body().get("content", "")
        lines = content.splitlines()
        if lines and lines[0].strip() == "---" and "---" not in (line.strip() for line in lines[1:]):
            self._json({"errors": [{"message": "The YAML front matter is not closed by a '---' line"}],
                        "warnings": []}, 400)
            return
        self._json({"errors": [], "warnings": []})

    def repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> None:
        repo = self._readable_repo(repo_type, repo_id)
        sha = self.store.resolve(repo, revision)
        commit = repo["commits"][sha]
        blobs = self._flag("blobs")
        siblings = []
        for path, entry in commit["files"].items():
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["lfs"]["sha256"],
                                      "pointerSize": entry["lfs"]["pointerSize"]}
            siblings.append(sibling)
        info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                "author": repo_id.split("/")[0], "sha": sha, "lastModified": commit["date"],
                "createdAt": repo["createdAt"], "private": repo["private"], "gated": False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": sum(entry["size"] for entry in commit["files"].values())}
        if repo_type == "model":
            info["modelId"] = repo_id
        if repo_type == "space":
            info.update(sdk="static", runtime={"stage": "RUNNING", "hardware": {"current": None}})
        expand = self.query.get("expand") or self.query.get("expand[]")
        if expand:
            info = {key: value for key, value in info.items() if key in expand or key in ("_id", "id")}
        self._json(info)

    def _flag(self, name: str) -> bool:
        return (self.query.get(name) or ["false"])[-1].lower() in ("1", "true", "yes")

    # ---- listing --------------------------------------------------------------------------------------------
    def _entries(self, repo: dict, sha: str, paths: list[str], expand: bool) -> list[dict]:
        """Tree entries (files and folders) for `paths` at commit `sha`, in the Hub's JSON shape."""
        files = self.store.files(repo, sha)
        out = []
        for path in paths:
            if path in files:
                entry = files[path]
                item: dict[str, Any] = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
                if entry["lfs"]:
                    item["lfs"] = {"oid": entry["lfs"]["sha256"], "size": entry["size"],
                                   "pointerSize": entry["lfs"]["pointerSize"]}
            else:
                inside = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
                tree_oid = hashlib.sha1("\n".join(f"{p} {oid}" for p, oid in inside).encode()).hexdigest()
                item = {"type": "directory", "oid": tree_oid, "size": 0, "path": path}
            if expand:
                item["lastCommit"] = self.store.last_commit(repo, sha, path, item["type"] == "directory")
            out.append(item)
        return out

    def tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._readable_repo(repo_type, repo_id)
        sha = self.store.resolve(repo, revision)
        files = self.store.files(repo, sha)
        path = path.strip("/")
        prefix = path + "/" if path else ""
        below = [p for p in files if p.startswith(prefix)]
        if path and not below:
            raise HubError(404, f"{path} does not exist (or is a file) at revision {revision}", "EntryNotFound",
                           headers={"X-Repo-Commit": sha})
        recursive, names = self._flag("recursive"), set()
        for p in below:
            parts = p[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            names.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
        # Folders first then files, each sorted, like the Hub's "tree first" listing.
        ordered = sorted(names, key=lambda n: (n in files, n))
        self._json(self._entries(repo, sha, ordered, self._flag("expand")), headers={"X-Repo-Commit": sha})

    def paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(repo_type, repo_id)
        sha = self.store.resolve(repo, revision)
        if "json" in self.headers.get("Content-Type", ""):
            payload = self._json_body()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:  # the client posts a form: paths=a&paths=b&expand=false
            form = parse_qs(self._body().decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[-1].lower() == "true"
        if isinstance(paths, str):
            paths = [paths]
        files = self.store.files(repo, sha)
        existing = []
        for path in dict.fromkeys(str(p).strip("/") for p in paths):
            if path in files or any(p.startswith(path + "/") for p in files):
                existing.append(path)
        self._json(self._entries(repo, sha, existing, expand), headers={"X-Repo-Commit": sha})

    def refs(self, repo_type: str, repo_id: str) -> None:
        repo = self._readable_repo(repo_type, repo_id)
        branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                    for name, sha in sorted(repo["branches"].items())]
        self._json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(repo_type, repo_id)
        out = []
        for sha in self.store.history(repo, self.store.resolve(repo, revision)):
            info = repo["commits"][sha]
            out.append({"id": sha, "title": info["title"], "message": info["message"], "date": info["date"],
                        "authors": [{"user": info["author"]}]})
        self._json(out)

    # ---- writing --------------------------------------------------------------------------------------------
    def branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        repo, _ = self._writable_repo(repo_type, repo_id)
        if self.command == "DELETE":
            self._body()
            self.store.delete_branch(repo, branch)
        else:
            self.store.create_branch(repo, branch, self._json_body().get("startingPoint"))
        self._json({})

    def preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo, _ = self._writable_repo(repo_type, repo_id)
        payload = self._json_body()
        if self.query.get("create_pr"):
            raise HubError(501, "LocalHub does not implement pull requests (create_pr=True)")
        files = self.store.files(repo, self.store.resolve(repo, revision))
        answer = []
        for item in payload.get("files", []):
            try:
                path, size, sample = item["path"], int(item["size"]), base64.b64decode(item.get("sample", ""))
            except (KeyError, TypeError, ValueError) as error:
                raise HubError(400, f"Malformed preupload entry {item!r}: {error!r}") from None
            mode = upload_mode(_check_path(path), size, sample)
            existing = files.get(path)
            # The client compares this oid with its own (sha256 for LFS, git sha1 otherwise) to skip unchanged files.
            oid = None if existing is None else (existing["lfs"]["sha256"] if existing["lfs"] else existing["oid"])
            answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json({"files": answer, "commitOid": self.store.resolve(repo, revision)})

    def commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        _, user = self._writable_repo(repo_type, repo_id)
        if self.query.get("create_pr"):
            self._body()
            raise HubError(501, "LocalHub does not implement pull requests (create_pr=True)")
        header, operations = None, []
        for number, line in enumerate(self._body().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    content = value["content"]
                    data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                    operations.append(("file", value["path"], data))
                elif key == "lfsFile":
                    if value.get("algo", "sha256") != "sha256":
                        raise HubError(400, f"Unsupported LFS hash algorithm {value.get('algo')!r}")
                    operations.append(("lfsFile", value["path"], value["oid"], value.get("size")))
                elif key in ("deletedFile", "deletedFolder"):
                    operations.append((key, value["path"]))
                else:
                    raise HubError(400, f"Unknown commit line key {key!r} (line {number})")
            except (KeyError, TypeError, ValueError) as error:
                raise HubError(400, f"Malformed commit payload, line {number}: {error!r}") from None
        if header is None or not header.get("summary"):
            raise HubError(400, "The commit payload needs a header line with a summary")
        sha = self.store.commit(repo_type, repo_id, revision, operations, title=header["summary"],
                                message=header.get("description", ""), author=user,
                                parent_commit=header.get("parentCommit"))
        self._json({"success": True, "commitOid": sha, "pullRequestUrl": None,
                    "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{sha}"})

    # ---- LFS ------------------------------------------------------------------------------------------------
    def lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._writable_repo(repo_type, repo_id)
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(501, "LocalHub only implements LFS uploads (downloads go through /resolve/)")
        objects = []
        for item in payload.get("objects", []):
            oid, size = str(item.get("oid")), item.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "oid must be a sha256 and size an integer"}})
                continue
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            path = self.store.lfs_path(oid)
            if not (path.is_file() and path.stat().st_size == size):  # already stored: no actions, client skips
                href = f"{self.endpoint}/_localhub/lfs/{oid}"
                answer["actions"] = {"upload": {"href": href, "header": {}},
                                     "verify": {"href": f"{href}/verify", "header": {}}}
            objects.append(answer)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def lfs_upload(self, oid: str) -> None:
        destination = self.store.lfs_path(oid)
        digest = hashlib.sha256()
        fd, tmp = self.store.tmp_file()
        try:
            with os.fdopen(fd, "wb") as file:
                for chunk in self._body_chunks():
                    digest.update(chunk)
                    file.write(chunk)
            if digest.hexdigest() != oid:
                raise HubError(400, f"Uploaded content has sha256 {digest.hexdigest()}, expected {oid}")
            os.replace(tmp, destination)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._json({}, headers={"ETag": f'"{oid}"'})

    def lfs_verify(self, oid: str) -> None:
        payload = self._json_body()
        path = self.store.lfs_path(oid)
        if not path.is_file():
            raise HubError(404, f"LFS object {oid} was not uploaded")
        if payload.get("size") is not None and payload["size"] != path.stat().st_size:
            raise HubError(400, f"LFS object {oid} has {path.stat().st_size} bytes, expected {payload['size']}")
        self._json({})

    # ---- downloads ------------------------------------------------------------------------------------------
    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._readable_repo(repo_type, repo_id)
        sha = self.store.resolve(repo, revision)
        entry = self.store.files(repo, sha).get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path} at revision {revision}", "EntryNotFound",
                           headers={"X-Repo-Commit": sha})
        blob, size = self.store.blob_path(entry), entry["size"]
        etag = entry["lfs"]["sha256"] if entry["lfs"] else entry["oid"]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": f'inline; filename="{Path(path).name}"'}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size - 1, 200
        byte_range = self._parse_range(self.headers.get("Range"), size)
        if byte_range == "unsatisfiable":
            raise HubError(416, f"Range {self.headers.get('Range')} is outside {path} ({size} bytes)",
                           headers={"Content-Range": f"bytes */{size}", **headers})
        if byte_range is not None:
            start, end, status = byte_range[0], byte_range[1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(blob, "rb") as file:
            file.seek(start)
            remaining = length
            while remaining:
                data = file.read(min(remaining, CHUNK))
                if not data:
                    raise OSError(f"{blob} is shorter than recorded ({size} bytes)")
                self.wfile.write(data)
                remaining -= len(data)

    @staticmethod
    def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
        """(start, end) inclusive for a single `bytes=` range, "unsatisfiable", or None to send the whole file."""
        match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
        if not match or match.groups() == ("", ""):
            return None  # absent, malformed or multi-range: a full 200 answer is allowed
        first, last = match.groups()
        if first == "":  # suffix range: the last N bytes
            count = int(last)
            if count == 0:
                return "unsatisfiable"
            return max(size - count, 0), size - 1
        start = int(first)
        if last and int(last) < start:
            return None  # an invalid range is ignored (RFC 9110, 14.2)
        if start >= size:
            return "unsatisfiable"
        return start, min(int(last), size - 1) if last else size - 1


# --------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------
def check_loopback(host: str) -> str:
    """`host` if it is an IPv4 loopback address (127.0.0.0/8, or "localhost"); otherwise a ValueError. The server
    accepts writes with a fixed, published token, so it must not be reachable from other machines."""
    if host == "localhost":
        return host
    try:
        loopback = ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"LocalHub listens on loopback addresses only (127.0.0.1 or another 127.x.y.z, localhost), "
                         f"not {host!r}: it accepts writes with a fixed token.")
    return host


class HubEscapeError(RuntimeError):
    """A patched client tried to reach a host other than the LocalHub (the real Hub, a CDN, ...)."""


class LocalHub:
    """A Hub stand-in on loopback, served from a background daemon thread.

    Args:
        storage_dir: where repos and files live; reusing a directory reopens its repos.
        host, port: address to listen on, a loopback one only (ValueError otherwise); port 0 picks a free port.
        user: the user every valid token authenticates as (and the default namespace of `create_repo`).
        token: the token writes must carry (`Authorization: Bearer ...`); None accepts any token. Reads of public
            repos need none, like on the Hub.
    """

    def __init__(
        self,
        storage_dir: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = DEFAULT_USER,
        token: str | None = DEFAULT_TOKEN,
    ):
        check_loopback(host)
        self.store = RepoStore(storage_dir)
        self.user, self.token = user, token
        self._address = (host, port)
        self._server: _HubHTTPServer | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._records: list[RequestRecord] = []
        self._unhandled_routes: list[str] = []
        self._blocked: list[str] = []
        self._records_lock = threading.Lock()
        self._home: tempfile.TemporaryDirectory | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> LocalHub:
        if self._server is not None:
            raise RuntimeError("LocalHub is already running")
        self._server = _HubHTTPServer(self._address, self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"LocalHub-{self.port}", daemon=True)
        self._thread.start()
        logger.debug("LocalHub serving %s from %s", self.endpoint, self.store.root)
        return self

    def stop(self) -> None:
        """Stop serving and end open connections. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_open_connections()
            if self._thread is not None:
                self._thread.join(timeout=5)
        if self._home is not None:
            self._home.cleanup()
            self._home = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port served on (kept after `stop()`, so a test can check that nothing answers there any more)."""
        if self._port is None:
            raise RuntimeError("LocalHub was never started: call start() or use it as a context manager")
        return self._port

    @property
    def endpoint(self) -> str:
        """The URL to use as HF_ENDPOINT, e.g. "http://127.0.0.1:54321"."""
        return f"http://{self._address[0]}:{self.port}"

    # ---- observation ----------------------------------------------------------------------------------------
    def _record(self, record: RequestRecord) -> None:
        logger.debug("LocalHub: %s %s -> %d", record.method, record.path, record.status)
        with self._records_lock:
            self._records.append(record)

    def _unhandled(self, route: str) -> None:
        logger.warning("LocalHub: no route for %s (answered 404)", route)
        with self._records_lock:
            self._unhandled_routes.append(route)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request answered so far, oldest first."""
        with self._records_lock:
            return list(self._records)

    @property
    def unhandled(self) -> list[str]:
        """"METHOD path" of requests no route matched: a client feature this stand-in lacks."""
        with self._records_lock:
            return list(self._unhandled_routes)

    @property
    def blocked(self) -> list[str]:
        """URLs a patched huggingface_hub session refused because they were not on this hub."""
        with self._records_lock:
            return list(self._blocked)

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        """Number of requests matching an HTTP method and/or a substring of the request path."""
        return sum(1 for r in self.requests if (method is None or r.method == method)
                   and (path_contains is None or path_contains in r.path))

    def clear_requests(self) -> None:
        with self._records_lock:
            self._records.clear()

    # ---- client configuration -------------------------------------------------------------------------------
    def env(self, home: str | os.PathLike) -> dict[str, str]:
        """Environment variables pointing a *fresh* process at this hub (for subprocess tests)."""
        home = Path(home)
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_TOKEN": self.token or DEFAULT_TOKEN,
            "HF_HUB_DISABLE_XET": "1",  # no Xet server here: uploads must take the LFS route
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_DATASETS_CACHE": str(home / "datasets"),
            "HF_MODULES_CACHE": str(home / "modules"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "DISABLE_SAFETENSORS_CONVERSION": "1",  # transformers would otherwise ask a conversion bot on the Hub
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets would otherwise ping an S3 bucket on every Hub load
        }

    def _client_patches(self, home: Path) -> list[tuple[Any, str, Any]]:
        """(object, attribute, value) for the settings the client libraries froze at import time."""
        env, endpoint = self.env(home), self.endpoint
        patches: list[tuple[Any, str, Any]] = []

        def patch(obj: Any, **values: Any) -> None:
            patches.extend((obj, name, value) for name, value in values.items())

        constants = importlib.import_module("huggingface_hub.constants")
        patch(
            constants,
            ENDPOINT=endpoint,
            HUGGINGFACE_CO_URL_TEMPLATE=endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            HF_URL_HOSTS=constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname},
            HF_HUB_OFFLINE=False,
            HF_HUB_DISABLE_XET=True,
            HF_HUB_DISABLE_TELEMETRY=True,
            HF_HOME=env["HF_HOME"],
            HF_HUB_CACHE=env["HF_HUB_CACHE"],
            HUGGINGFACE_HUB_CACHE=env["HF_HUB_CACHE"],
            HF_ASSETS_CACHE=env["HF_ASSETS_CACHE"],
            HF_XET_CACHE=env["HF_XET_CACHE"],
            HF_TOKEN_PATH=env["HF_TOKEN_PATH"],
            HF_STORED_TOKENS_PATH=str(home / "stored_tokens"),
        )
        # The module-level HfApi behind `create_repo`, `upload_file`, ... and the module-level HfFileSystem.
        patch(importlib.import_module("huggingface_hub.hf_api").api, endpoint=endpoint)
        hffs = importlib.import_module("huggingface_hub.hf_file_system").hffs
        patch(hffs, endpoint=endpoint)
        patch(hffs._api, endpoint=endpoint)
        for module_name, attribute in (
            ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE"),
            ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE"),
        ):
            module = sys.modules.get(module_name)
            if module is not None and hasattr(module, attribute):
                patch(module, **{attribute: env[attribute]})

        if importlib.util.find_spec("transformers") is not None:
            # transformers caches one HfApi (built on first use with the endpoint of that moment): drop it.
            patch(importlib.import_module("transformers.utils.hub"), _hf_api=None)
            for module_name in ("transformers.utils.hub", "transformers.dynamic_module_utils",
                                "transformers.file_utils", "transformers.utils"):
                module = importlib.import_module(module_name)
                if hasattr(module, "HF_MODULES_CACHE"):  # where trust_remote_code modules are written
                    patch(module, HF_MODULES_CACHE=env["HF_MODULES_CACHE"])

        if importlib.util.find_spec("datasets") is not None:
            datasets_cache = Path(env["HF_DATASETS_CACHE"])
            patch(
                importlib.import_module("datasets.config"),
                HF_ENDPOINT=endpoint,
                HUB_DATASETS_URL=endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
                HF_HUB_OFFLINE=False,
                HF_DATASETS_OFFLINE=False,
                HF_UPDATE_DOWNLOAD_COUNTS=False,
                HF_CACHE_HOME=str(home),
                HF_DATASETS_CACHE=datasets_cache,
                HF_MODULES_CACHE=Path(env["HF_MODULES_CACHE"]),
                DOWNLOADED_DATASETS_PATH=datasets_cache / "downloads",
                EXTRACTED_DATASETS_PATH=datasets_cache / "downloads" / "extracted",
            )
        return patches

    def _guarded_client_factory(self, previous: Callable) -> Callable:
        """huggingface_hub's shared HTTP client, with a timeout and a refusal of any host but this hub."""
        import httpx2

        allowed = urlsplit(self.endpoint).netloc
        viewer = f"datasets-server.{urlsplit(self.endpoint).hostname}"

        def refuse_other_hosts(request) -> None:
            if request.url.host == viewer:
                # datasets derives the dataset-viewer URL from HF_ENDPOINT ("datasets-server.127.0.0.1", which no
                # resolver knows): send it here, where it gets the viewer's 404 for a dataset it has not processed.
                request.url = request.url.copy_with(host=urlsplit(self.endpoint).hostname, port=self.port,
                                                    path="/_datasets-server" + request.url.path)
                request.headers["Host"] = allowed
            elif request.url.netloc.decode() != allowed:
                with self._records_lock:
                    self._blocked.append(str(request.url))
                raise HubEscapeError(f"LocalHub: the client tried to reach {request.url}, outside {self.endpoint}")

        def factory():
            client = previous()
            client.event_hooks = {**client.event_hooks,
                                  "request": [refuse_other_hosts, *client.event_hooks.get("request", [])]}
            client.timeout = httpx2.Timeout(60.0)  # the default client has no timeout: never hang a test
            return client

        return factory

    @contextmanager
    def patched(self, home: str | os.PathLike | None = None, *, block_other_hosts: bool = True) -> Iterator[Path]:
        """Point huggingface_hub, transformers and datasets in this process at the hub; undo on exit.

        Sets the environment variables of `env()` and patches the import-time copies listed in `_client_patches`.
        `home` (default: a temporary folder removed by `stop()`) holds the client caches, isolated from
        ~/.cache/huggingface. With `block_other_hosts`, huggingface_hub's HTTP session refuses any other host with
        `HubEscapeError` (recorded in `blocked`), so a leak to huggingface.co fails loudly instead of hanging.
        Yields the client home folder.
        """
        home = self._client_home(home)
        patches = self._client_patches(home)  # imports the client libraries before anything is changed
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        saved_env = {name: os.environ.get(name) for name in self.env(home)}
        http = importlib.import_module("huggingface_hub.utils._http")
        previous_factory = http._GLOBAL_CLIENT_FACTORY
        try:
            os.environ.update(self.env(home))
            for obj, name, value in patches:
                setattr(obj, name, value)
            self._reset_client_caches()
            if block_other_hosts:
                http.set_client_factory(self._guarded_client_factory(previous_factory))
            else:
                http.close_session()  # drop connections kept alive to another hub
            yield home
        finally:
            http.set_client_factory(previous_factory)
            for obj, name, value in reversed(saved):
                setattr(obj, name, value)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._reset_client_caches()

    def patch_env(self, monkeypatch, home: str | os.PathLike | None = None, *,
                  block_other_hosts: bool = True) -> Path:
        """pytest flavour of `patched()`: the patches are undone with `monkeypatch` at test teardown."""
        context = self.patched(home, block_other_hosts=block_other_hosts)
        home = context.__enter__()
        # monkeypatch undoes its own changes last-in first-out; registering the exit through a patched dummy
        # attribute keeps the order right even if the test patches more things after us.
        monkeypatch.setattr(_TeardownHook(context), "armed", True)
        return home

    def _client_home(self, home: str | os.PathLike | None) -> Path:
        if home is None:
            if self._home is None:
                self._home = tempfile.TemporaryDirectory(prefix="localhub-client-")
            home = self._home.name
        home = Path(home)
        home.mkdir(parents=True, exist_ok=True)
        return home

    @staticmethod
    def _reset_client_caches() -> None:
        # HfFileSystem instances are cached per (endpoint, token, thread) and keep directory listings.
        hf_file_system = importlib.import_module("huggingface_hub.hf_file_system")
        hf_file_system.HfFileSystem.clear_instance_cache()
        whoami_cache = getattr(importlib.import_module("huggingface_hub.hf_api").api, "_whoami_cache", None)
        if whoami_cache is not None:
            whoami_cache.clear()


class _TeardownHook:
    """Runs a context manager's exit when monkeypatch restores `armed` at teardown."""

    def __init__(self, context):
        self._context = context
        self._armed = False

    @property
    def armed(self) -> bool:
        return self._armed

    @armed.setter
    def armed(self, value: bool) -> None:
        if self._armed and not value:
            self._context.__exit__(None, None, None)
        self._armed = value


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a loopback stand-in for the Hugging Face Hub.")
    parser.add_argument("--storage", required=True, help="folder holding the repos (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (others are refused)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    parser.add_argument("--user", default=DEFAULT_USER)
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="token writes must carry; '' accepts any token")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    try:
        check_loopback(args.host)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    hub = LocalHub(args.storage, host=args.host, port=args.port, user=args.user, token=args.token or None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with hub:
        # One line a parent process can parse, then the settings to export in a shell.
        print(f"LocalHub serving {hub.endpoint} from {hub.store.root}", flush=True)
        print(f"export HF_ENDPOINT={hub.endpoint} HF_TOKEN={hub.token or DEFAULT_TOKEN} HF_HUB_DISABLE_XET=1",
              flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
