"""LocalHub: the real huggingface_hub / transformers / datasets client code against the loopback Hub stand-in."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    ModelCardData,
    create_repo,
    hf_hub_download,
    snapshot_download,
    upload_folder,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save_file

from hub_server import DEFAULT_TOKEN, HubEscapeError, LocalHub

SERVER = Path(__file__).with_name("hub_server.py")


# ----------------------------------------------------------------------------------------------------------------
# huggingface_hub
# ----------------------------------------------------------------------------------------------------------------
def test_upload_folder_download_and_revisions(hub, tmp_path):
    folder = tmp_path / "folder"
    (folder / "nested").mkdir(parents=True)
    (folder / "notes.txt").write_text("hello")
    (folder / "model.safetensors").write_bytes(os.urandom(3000))
    (folder / "nested" / "info.json").write_text('{"a": 1}')
    url = create_repo("local-user/files")
    assert url.repo_id == "local-user/files" and url.endpoint == hub.endpoint
    first = upload_folder(repo_id="local-user/files", folder_path=folder)

    for name in ("notes.txt", "model.safetensors", "nested/info.json"):
        assert open(hf_hub_download("local-user/files", name), "rb").read() == (folder / name).read_bytes()
    # The binary went through the LFS batch API and is reported as LFS; the text file is a regular git blob.
    assert hub.count("POST", ".git/info/lfs/objects/batch") == 1
    info = HfApi().model_info("local-user/files", files_metadata=True)
    lfs = {sibling.rfilename: sibling.lfs for sibling in info.siblings}
    assert lfs["notes.txt"] is None and lfs["model.safetensors"].size == 3000
    assert info.sha == first.oid

    (folder / "notes.txt").write_text("hello again")
    second = upload_folder(repo_id="local-user/files", folder_path=folder)
    assert second.oid != first.oid and len(second.oid) == 40
    assert open(hf_hub_download("local-user/files", "notes.txt")).read() == "hello again"
    assert open(hf_hub_download("local-user/files", "notes.txt", revision=first.oid)).read() == "hello"

    # An unchanged file is served from the local cache: a metadata HEAD, no second GET.
    gets = hub.count("GET", "/resolve/main/model.safetensors")
    hf_hub_download("local-user/files", "model.safetensors")
    assert hub.count("GET", "/resolve/main/model.safetensors") == gets


def test_commit_operations_tree_and_snapshot(hub, tmp_path):
    api = HfApi()
    api.create_repo("local-user/ops")
    api.create_commit("local-user/ops", [CommitOperationAdd("a/one.txt", b"1"), CommitOperationAdd("a/two.txt", b"2"),
                                         CommitOperationAdd("b.bin", b"\x00" * 10)], commit_message="add")
    tree = {entry.path: type(entry).__name__ for entry in api.list_repo_tree("local-user/ops", recursive=True)}
    assert tree == {".gitattributes": "RepoFile", "a": "RepoFolder", "a/one.txt": "RepoFile",
                    "a/two.txt": "RepoFile", "b.bin": "RepoFile"}
    assert [e.path for e in api.list_repo_tree("local-user/ops", path_in_repo="a")] == ["a/one.txt", "a/two.txt"]
    infos = api.get_paths_info("local-user/ops", ["a", "b.bin", "missing"], expand=True)
    assert [info.path for info in infos] == ["a", "b.bin"] and infos[1].last_commit.title == "add"

    api.create_commit("local-user/ops", [CommitOperationDelete("a/one.txt")], commit_message="drop one")
    api.delete_file("b.bin", "local-user/ops")
    assert api.list_repo_files("local-user/ops") == [".gitattributes", "a/two.txt"]
    api.delete_folder("a", "local-user/ops")
    assert api.list_repo_files("local-user/ops") == [".gitattributes"]
    titles = [commit.title for commit in api.list_repo_commits("local-user/ops")]
    assert titles[0] == "Delete folder a with huggingface_hub" and titles[-1] == "initial commit" and len(titles) == 5

    old = api.list_repo_commits("local-user/ops")[3].commit_id  # the "add" commit
    snapshot = snapshot_download("local-user/ops", revision=old)
    files = sorted(p.relative_to(snapshot).as_posix() for p in Path(snapshot).rglob("*") if p.is_file())
    assert files == [".gitattributes", "a/one.txt", "a/two.txt", "b.bin"]

    # Branches: commits to a branch leave main alone.
    api.create_branch("local-user/ops", branch="dev", revision=old)
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="dev.txt", repo_id="local-user/ops", revision="dev")
    assert api.list_repo_files("local-user/ops", revision="dev") == [
        ".gitattributes", "a/one.txt", "a/two.txt", "b.bin", "dev.txt"]
    assert api.list_repo_files("local-user/ops") == [".gitattributes"]


def test_errors_map_to_client_exceptions(hub):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("local-user/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("local-user/missing")
    api.create_repo("local-user/errors")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("local-user/errors", "absent.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("local-user/errors", ".gitattributes", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        api.delete_file("absent.txt", "local-user/errors")
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo("local-user/errors")
    assert exists.value.response.status_code == 409
    assert api.create_repo("local-user/errors", exist_ok=True).repo_id == "local-user/errors"
    # A model repo is not a dataset repo; a private repo is not found without a token.
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("local-user/errors")
    api.create_repo("local-user/secret", private=True)
    assert api.model_info("local-user/secret").private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("local-user/secret")
    # Writes need the hub's token; a stale parent commit is refused.
    with pytest.raises(HfHubHTTPError) as unauthorized:
        HfApi(token="hf_wrong").upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="local-user/errors")
    assert unauthorized.value.response.status_code == 401
    head = api.model_info("local-user/errors").sha
    api.upload_file(path_or_fileobj=b"1", path_in_repo="x.txt", repo_id="local-user/errors")
    with pytest.raises(HfHubHTTPError) as stale:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="x.txt", repo_id="local-user/errors", parent_commit=head)
    assert stale.value.response.status_code == 412


def test_resolve_headers_and_range_requests(hub):
    """Raw HTTP, as a streaming reader sees it: HEAD metadata, 206 partial content, 416 past the end."""
    data = bytes(range(256)) * 4
    create_repo("local-user/raw")
    commit = HfApi().upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id="local-user/raw")
    url = f"{hub.endpoint}/local-user/raw/resolve/main/blob.bin"

    def fetch(method="GET", byte_range=None):
        request = urllib.request.Request(url, method=method, headers={"Range": byte_range} if byte_range else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    status, headers, body = fetch("HEAD")
    assert (status, body, headers["Content-Length"], headers["X-Linked-Size"]) == (200, b"", "1024", "1024")
    assert headers["X-Repo-Commit"] == commit.oid
    assert headers["X-Linked-Etag"].strip('"') == hashlib.sha256(data).hexdigest()
    assert fetch("GET", "bytes=10-19")[::2] == (206, data[10:20])
    assert fetch("GET", "bytes=10-19")[1]["Content-Range"] == "bytes 10-19/1024"
    assert fetch("GET", "bytes=-5")[::2] == (206, data[-5:])
    assert fetch("GET", "bytes=1000-")[::2] == (206, data[1000:])
    assert fetch("GET", "bytes=1000-5000")[::2] == (206, data[1000:])
    status, headers, _ = fetch("GET", "bytes=1024-")
    assert (status, headers["Content-Range"]) == (416, "bytes */1024")
    assert fetch("GET")[::2] == (200, data)


def test_model_card_push_and_load(hub):
    create_repo("local-user/carded")
    card = ModelCard.from_template(ModelCardData(license="apache-2.0", tags=["segmentation"]), model_id="carded")
    card.push_to_hub("local-user/carded")
    loaded = ModelCard.load("local-user/carded")
    assert loaded.data.license == "apache-2.0" and loaded.data.tags == ["segmentation"]
    assert str(loaded) == str(card)
    assert hub.count("POST", "/api/validate-yaml") >= 1  # the Hub checks the card YAML before the upload


def test_requests_elsewhere_are_refused_and_patches_undone(tmp_path):
    import huggingface_hub.constants as constants
    from huggingface_hub.utils import get_session

    before = constants.ENDPOINT
    with LocalHub(tmp_path / "hub") as hub:
        with hub.patched(tmp_path / "home"):
            assert constants.ENDPOINT == hub.endpoint and os.environ["HF_ENDPOINT"] == hub.endpoint
            start = time.monotonic()
            with pytest.raises(HubEscapeError):
                get_session().get("https://huggingface.co/api/models/google/vit-base-patch16-224")
            assert time.monotonic() - start < 1
        assert hub.blocked == ["https://huggingface.co/api/models/google/vit-base-patch16-224"]
    assert constants.ENDPOINT == before and os.environ.get("HF_ENDPOINT") != hub.endpoint


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org", "::"])
def test_only_loopback_hosts_are_served(tmp_path, host):
    # Writes need only a fixed, published token: the server must not be reachable from other machines.
    with pytest.raises(ValueError, match="loopback addresses only"):
        LocalHub(tmp_path / "hub", host=host)
    run = subprocess.run([sys.executable, str(SERVER), "--storage", str(tmp_path / "cli"), "--host", host],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "loopback addresses only" in run.stderr
    assert not (tmp_path / "hub").exists() and not (tmp_path / "cli").exists()


def test_the_server_is_not_part_of_the_installed_package():
    import importlib.util

    import s5_hf

    assert importlib.util.find_spec("s5_hf.testing") is None
    package = Path(s5_hf.__file__).parent
    assert not [p for p in package.rglob("*.py") if "LocalHub" in p.read_text()]


def test_command_line_server_persists_repos(tmp_path):
    """`python tests/hub_server.py` serves the storage folder; a second server reopens its repos."""
    storage = tmp_path / "hub"
    process = subprocess.Popen([sys.executable, str(SERVER), "--storage", str(storage)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = process.stdout.readline().split()[2]
        api = HfApi(endpoint=endpoint, token=DEFAULT_TOKEN)
        api.create_repo("local-user/persisted", repo_type="dataset")
        commit = api.upload_file(path_or_fileobj=b"kept", path_in_repo="kept.txt", repo_id="local-user/persisted",
                                 repo_type="dataset")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0, process.stderr.read()
    assert (storage / "repos/datasets/local-user/persisted/main/kept.txt").read_text() == "kept"

    with LocalHub(storage) as hub:
        path = hf_hub_download("local-user/persisted", "kept.txt", repo_type="dataset", endpoint=hub.endpoint,
                               cache_dir=tmp_path / "cache", token=DEFAULT_TOKEN)
        assert open(path).read() == "kept"
        assert HfApi(endpoint=hub.endpoint).dataset_info("local-user/persisted").sha == commit.oid
    with pytest.raises(urllib.error.URLError):  # stopped means stopped
        urllib.request.urlopen(f"{hub.endpoint}/api/datasets/local-user/persisted", timeout=5)


# ----------------------------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------------------------
def test_tiny_vit_push_to_hub_and_from_pretrained(hub):
    from transformers import AutoImageProcessor, AutoModel, ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                       image_size=32, patch_size=16)
    model = ViTModel(config).eval()
    model.push_to_hub("local-user/tiny-vit")
    config.push_to_hub("local-user/tiny-vit", commit_message="config again")
    ViTImageProcessor(size={"height": 32, "width": 32}).push_to_hub("local-user/tiny-vit")

    loaded = AutoModel.from_pretrained("local-user/tiny-vit").eval()
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    processor = AutoImageProcessor.from_pretrained("local-user/tiny-vit")
    assert processor.size == {"height": 32, "width": 32}
    files = HfApi().list_repo_files("local-user/tiny-vit")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(files)


CUSTOM_CONFIG = '''
from transformers import PretrainedConfig


class TinyRemoteConfig(PretrainedConfig):
    model_type = "tiny-remote"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)
'''

CUSTOM_MODEL = '''
import torch
from transformers import PreTrainedModel

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteModel(PreTrainedModel):
    config_class = TinyRemoteConfig

    def __init__(self, config):
        super().__init__(config)
        self.linear = torch.nn.Linear(config.width, config.width)
        self.post_init()

    def forward(self, x):
        return self.linear(x) * 2
'''


def test_remote_code_model_loads_with_trust_remote_code(hub, tmp_path):
    from transformers import AutoModel

    folder = tmp_path / "tiny_remote"
    folder.mkdir()
    (folder / "configuration_tiny_remote.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_tiny_remote.py").write_text(CUSTOM_MODEL)
    config = {"model_type": "tiny-remote", "width": 3, "architectures": ["TinyRemoteModel"],
              "auto_map": {"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
                           "AutoModel": "modeling_tiny_remote.TinyRemoteModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 3), torch.randn(3)
    save_file({"linear.weight": weight, "linear.bias": bias}, folder / "model.safetensors")
    create_repo("local-user/tiny-remote")
    upload_folder(repo_id="local-user/tiny-remote", folder_path=folder)

    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModel.from_pretrained("local-user/tiny-remote", trust_remote_code=False)
    model = AutoModel.from_pretrained("local-user/tiny-remote", trust_remote_code=True)
    assert type(model).__name__ == "TinyRemoteModel"
    # The code was fetched from the hub into the isolated modules cache, not imported from the test folder.
    module_file = sys.modules[type(model).__module__].__file__
    assert module_file.startswith(str(tmp_path / "hf_home" / "modules"))
    x = torch.randn(2, 3)
    torch.testing.assert_close(model(x), (x @ weight.T + bias) * 2)


# ----------------------------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------------------------
DATASET_CARD = """\
---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
---
# Tiny shards
"""


def test_dataset_parquet_shards_load_and_stream(hub, tmp_path):
    import datasets

    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    rows = [{"id": i, "label": f"tile-{i}"} for i in range(7)]
    pq.write_table(pa.Table.from_pylist(rows[:4]), folder / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[4:]), folder / "data" / "train-00001-of-00002.parquet")
    (folder / "README.md").write_text(DATASET_CARD)
    create_repo("local-user/tiles", repo_type="dataset")
    upload_folder(repo_id="local-user/tiles", repo_type="dataset", folder_path=folder)

    loaded = datasets.load_dataset("local-user/tiles", split="train")
    assert sorted(loaded.to_list(), key=lambda row: row["id"]) == rows
    assert str(tmp_path / "hf_home") in loaded.cache_files[0]["filename"]  # isolated datasets cache

    streamed = datasets.load_dataset("local-user/tiles", split="train", streaming=True)
    assert sorted(streamed, key=lambda row: row["id"]) == rows
    # Streaming reads the shards over HTTP range requests instead of downloading them.
    assert hub.count("GET", "/resolve/") and all(r.status == 206 for r in hub.requests if r.range)
    assert any(r.range for r in hub.requests)


def test_benchmark_shards_pushed_load_as_s5_dataset_streaming(hub, tmp_path):
    """`to_parquet_shards` output, uploaded as ``s5/<name>``: `load_dataset(..., streaming=True)` gives the
    reader's rows pixel for pixel (Image features from the card), and the shards split over ranks."""
    import datasets
    import numpy as np
    from datasets.distributed import split_dataset_by_node

    from s5_hf.data import load_benchmark, to_parquet_shards
    from s5_hf.data.synthetic import make_fake_loveda

    root = make_fake_loveda(tmp_path / "loveda", num_images=2, size=32, seed=4)
    rows = list(load_benchmark("loveda", root, "train", streaming=True))
    to_parquet_shards(load_benchmark("loveda", root, "train", streaming=True), tmp_path / "out", min_shards=2)
    HfApi().create_repo("s5/loveda", repo_type="dataset")
    upload_folder(repo_id="s5/loveda", repo_type="dataset", folder_path=tmp_path / "out")

    streamed = datasets.load_dataset("s5/loveda", split="train", streaming=True)
    assert all(isinstance(streamed.features[column], datasets.Image) for column in ("image", "mask"))
    got = list(streamed)
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    for a, b in zip(got, rows, strict=True):
        assert a["source"] == "loveda" and a["mask"].mode == "L"
        np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        np.testing.assert_array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
    parts = [split_dataset_by_node(datasets.load_dataset("s5/loveda", split="train", streaming=True), rank, 2)
             for rank in range(2)]
    assert all(part.num_shards == 1 for part in parts)  # one whole shard per rank
    assert sorted(r["id"] for part in parts for r in part) == sorted(r["id"] for r in rows)
