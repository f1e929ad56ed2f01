"""`mlxsft models pull` against a local stand-in for the Hugging Face hub (no network, real client).

`StandInHub` implements the endpoints `huggingface_hub.snapshot_download` calls (read from
huggingface_hub's source): the model info API `/api/models/{repo}/revision/{rev}`, the
tree listing `/api/models/{repo}/tree/{rev}`, and file resolution
`/{repo}/resolve/{rev}/{file}` (HEAD and GET, with ETag, X-Repo-Commit, Content-Length
and Range). It serves a tiny model built with devmodel, can drop a connection half-way
through a file or fail a file, and records every request. It binds 127.0.0.1 only and
shuts itself down after a few minutes at most.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlxsft.devmodel import TinyModelSpec, build_tiny_model
from mlxsft.errors import ModelError
from mlxsft.models.pull import HubSettings, pull_model
from mlxsft.store import SOURCE_FILE, list_partial, read_source

ROOT = Path(__file__).resolve().parents[1]
REPO = "tiny-org/Tiny-Chat-0.1B"
GATED = "locked-org/Gated-Model"
BIN_ONLY = "old-org/Bin-Only"
SERVER_LIFETIME_S = 300


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class StandInHub:
    """A minimal hub: repos of in-memory files, served over HTTP on 127.0.0.1."""

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: frozenset[str] = frozenset()):
        self.repos = {rid: {"sha": _sha1(rid.encode()), "files": files} for rid, files in repos.items()}
        self.gated = gated
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.drop_once: set[str] = set()  # files whose first GET stops half-way
        self.fail_get: set[str] = set()  # files whose GET answers 500
        self.refuse_tokens = False  # gated repos refuse even authenticated requests
        self.auth_seen: list[bool] = []  # whether each gated file request carried a token
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._deadline = threading.Timer(SERVER_LIFETIME_S, self.server.shutdown)

    def __enter__(self):
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc):
        self._deadline.cancel()
        self.server.shutdown()
        self.server.server_close()

    def gets(self, filename: str) -> list[str | None]:
        """Range headers of the GETs of one file (None: a whole-file GET)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path.endswith("/" + filename)]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

            def _json(self, status: int, body, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(data)),
                    **(headers or {}),
                }.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, code: str, message: str, head: bool):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _route(self, head: bool):
                path = self.path.split("?", 1)[0]
                with hub._lock:
                    hub.requests.append((self.command, path, self.headers.get("Range")))
                api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
                tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                repo_id = (api or tree or resolve).group(1) if (api or tree or resolve) else None
                repo = hub.repos.get(repo_id)
                if repo is None:
                    # the real hub answers 401 for unknown repos when the caller is anonymous
                    return self._error(401, "RepoNotFound", "Repository not found", head)
                if api:
                    return self._json(200, self._info(repo_id, repo))
                if tree:
                    return self._json(
                        200,
                        [
                            {"type": "file", "path": n, "size": len(b), "oid": _sha1(b)}
                            for n, b in sorted(repo["files"].items())
                        ],
                    )
                return self._file(repo_id, repo, resolve.group(3), head)

            def _info(self, repo_id, repo):
                return {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo["sha"],
                    "private": False,
                    "gated": "manual" if repo_id in hub.gated else False,
                    "disabled": False,
                    "siblings": [
                        {"rfilename": n, "size": len(b), "blobId": _sha1(b)} for n, b in sorted(repo["files"].items())
                    ],
                }

            def _file(self, repo_id, repo, name, head: bool):
                if repo_id in hub.gated:
                    token = "authorization" in {k.lower() for k in self.headers}
                    hub.auth_seen.append(token)
                    if not token or hub.refuse_tokens:
                        return self._error(
                            403 if token else 401,
                            "GatedRepo",
                            "Access to this model is restricted.",
                            head,
                        )
                data = repo["files"].get(name)
                if data is None:
                    return self._error(404, "EntryNotFound", "Entry not found", head)
                if not head and name in hub.fail_get:
                    return self._error(500, "InternalError", "Internal Error", head)
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and not head:
                    start = int(match.group(1))
                self.send_response(206 if start else 200)
                self.send_header("ETag", f'"{_sha1(data)}"')
                self.send_header("X-Repo-Commit", repo["sha"])
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                body = data[start:]
                if name in hub.drop_once and not start:
                    hub.drop_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])  # then hang up mid-file
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    """The files of a tiny model repo, plus things a pull must never fetch."""
    folder = build_tiny_model(tmp_path_factory.mktemp("hub-tiny"), TinyModelSpec())
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["modeling_tiny.py"] = b"raise SystemExit('remote code must never be fetched')\n"
    files["pytorch_model.bin"] = b"\x80\x04pickle-never-fetched"
    files["README.md"] = b"# tiny\n"
    return files


@pytest.fixture
def hub(tiny_files):
    bin_only = {k: v for k, v in tiny_files.items() if not k.endswith(".safetensors")}
    with StandInHub({REPO: tiny_files, GATED: tiny_files, BIN_ONLY: bin_only}, gated=frozenset({GATED})) as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch) -> HubSettings:
    """Point the hub client at the stand-in, with a private cache and no token."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return HubSettings.from_env()


@pytest.fixture
def store(tmp_path) -> Path:
    """A store that already holds a catalog and another model, which no pull may touch."""
    root = tmp_path / "models"
    other = root / "other-model"
    other.mkdir(parents=True)
    (other / "config.json").write_text('{"model_type": "llama"}')
    (root / "catalog.yaml").write_text("models: []\n")
    return root


def snapshot(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under root, except under the folders named in `skip`."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in skip:
            out[str(rel)] = (p.stat().st_size, p.stat().st_mtime_ns)
    return out


def test_pull_fetches_only_weights_config_and_tokenizer(hub, hub_env, store, tiny_files):
    before = snapshot(store, skip=())
    result = pull_model(REPO, store)
    dest = store / "Tiny-Chat-0.1B"
    assert result.path == dest and not result.already_present
    names = {p.name for p in dest.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= names
    assert not names & {"modeling_tiny.py", "pytorch_model.bin", "README.md", ".cache"}
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (dest / name).read_bytes() == tiny_files[name]
    source = read_source(dest)
    assert source["hub_id"] == REPO and source["commit"] == hub.repos[REPO]["sha"]
    assert not list_partial(store)
    assert snapshot(store, skip=("Tiny-Chat-0.1B",)) == before  # nothing else touched
    assert not hub.gets("modeling_tiny.py") and not hub.gets("pytorch_model.bin")

    # a second pull is answered from the store, without asking the hub for anything
    hub.requests.clear()
    again = pull_model(REPO, store)
    assert again.already_present and again.path == dest and hub.requests == []


def test_dropped_connection_resumes_with_a_range_request(hub, hub_env, store, tiny_files, monkeypatch):
    from huggingface_hub import constants

    # the client writes in 10 MB chunks and resumes from the last whole chunk; 32 KB chunks
    # let this half-megabyte file span many of them
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 32 * 1024)
    hub.drop_once.add("model.safetensors")
    result = pull_model(REPO, store)
    weights = tiny_files["model.safetensors"]
    assert (result.path / "model.safetensors").read_bytes() == weights
    ranges = hub.gets("model.safetensors")
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", ranges[1]).group(1))
    assert 0 < resumed_at < len(weights)  # only the missing tail was fetched again


def test_failed_pull_keeps_finished_files_and_the_next_run_resumes(hub, hub_env, store, capsys):
    hub.fail_get.add("model.safetensors")
    with pytest.raises(ModelError, match="HTTP 500.*run the same command again to resume"):
        pull_model(REPO, store)
    partial = store / ".partial-Tiny-Chat-0.1B"
    assert (partial / "tokenizer.json").is_file() and not (partial / "model.safetensors").exists()
    assert not (store / "Tiny-Chat-0.1B").exists()  # never a half model under the real name
    assert read_source(partial)["hub_id"] == REPO  # `models list` can say what to re-run

    hub.fail_get.clear()
    capsys.readouterr()
    result = pull_model(REPO, store)
    assert f"Resuming the unfinished download in {partial}" in capsys.readouterr().err  # reported
    assert (result.path / "model.safetensors").is_file() and not partial.exists()
    assert len(hub.gets("tokenizer.json")) == 1  # finished files were not fetched again
    assert len([r for r in hub.gets("model.safetensors")]) == 2  # the 500, then the real one


def test_unknown_repo_is_a_clear_error_and_leaves_the_store_alone(hub, hub_env, store):
    before = snapshot(store, skip=())
    with pytest.raises(ModelError, match="no model 'tiny-org/Does-Not-Exist' on the hub"):
        pull_model("tiny-org/Does-Not-Exist", store)
    assert snapshot(store, skip=()) == before and not list_partial(store)


def test_bad_ids_gated_repos_and_bin_only_repos_are_refused(hub, hub_env, store):
    with pytest.raises(ModelError, match="is not a hub id"):
        pull_model("not a hub id", store)
    with pytest.raises(ModelError, match="is gated.*hf auth login"):
        pull_model(GATED, store)
    with pytest.raises(ModelError, match="only PyTorch .bin weights.*--allow-bin"):
        pull_model(BIN_ONLY, store)
    assert not list_partial(store) and sorted(p.name for p in store.iterdir()) == [
        "catalog.yaml",
        "other-model",
    ]


def test_gated_repo_with_a_token(hub, hub_env, store, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_token_for_the_stand_in")
    hub.refuse_tokens = True  # the terms were not accepted for this account
    with pytest.raises(ModelError, match="is gated: accept its terms"):
        pull_model(GATED, store)
    assert not list_partial(store) and not (store / "Gated-Model").exists()
    hub.refuse_tokens = False  # terms accepted: the same token now gets the files
    result = pull_model(GATED, store)
    assert result.path == store / "Gated-Model" and (result.path / "model.safetensors").is_file()
    assert all(auth for auth in hub.auth_seen)  # every file request carried the token


def test_no_network_is_a_clear_error(hub_env, store, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = HubSettings(endpoint=f"http://127.0.0.1:{port}", cache_dir=hub_env.cache_dir, offline=False)
    with pytest.raises(ModelError, match="cannot reach the hub"):
        pull_model(REPO, store, hub=settings)
    assert not list_partial(store)


def _cli(args, env_extra, tmp_path, preexec=None, timeout=180):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    env.update(
        {
            "MLXSFT_NO_OPENBLAS": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HOME": str(tmp_path / "hf-home"),
            "PYTHONPATH": str(ROOT),
        },
        **env_extra,
    )
    return subprocess.run(
        [sys.executable, "-m", "mlxsft.cli", *args],
        env=env,
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=timeout,
        preexec_fn=preexec,
    )


def test_disk_full_mid_download_keeps_partial_and_resumes(hub, store, tmp_path):
    """A real write failure: the pull runs under a file-size limit smaller than the weights."""
    import resource

    limit = len(hub.repos[REPO]["files"]["model.safetensors"]) // 2
    assert all(len(b) < limit for n, b in hub.repos[REPO]["files"].items() if n != "model.safetensors")

    def small_files_only():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {"HF_ENDPOINT": hub.endpoint, "MLXSFT_MODELS": str(store)}
    out = _cli(["models", "pull", REPO], env, tmp_path, preexec=small_files_only)
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr
    assert "could not write the download" in out.stderr and "run the same command again" in out.stderr
    partial = store / ".partial-Tiny-Chat-0.1B"
    assert (partial / "tokenizer.json").is_file() and not (store / "Tiny-Chat-0.1B").exists()

    out = _cli(["models", "pull", REPO], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert (store / "Tiny-Chat-0.1B" / "model.safetensors").is_file() and not partial.exists()
    assert len(hub.gets("tokenizer.json")) == 1


def test_offline_pull_of_a_present_model_says_present(hub, hub_env, store, tmp_path):
    pull_model(REPO, store)
    hub.requests.clear()
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "1"}
    out = _cli(["models", "pull", REPO, "--store", str(store)], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "already present" in out.stdout and hub.requests == []
    out = _cli(["models", "pull", "tiny-org/Not-Here", "--store", str(store)], env, tmp_path)
    assert out.returncode == 2 and "HF_HUB_OFFLINE" in out.stderr and "Traceback" not in out.stderr
    out = _cli(["models", "info", REPO, "--store", str(store)], env, tmp_path)
    assert out.returncode == 0 and "ChatML" in out.stdout and REPO in out.stdout


def test_pull_with_quantize_writes_a_4bit_copy(hub, hub_env, store):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import load_model

    result = pull_model(REPO, store, quantize_bits=4, group_size=64)
    quant = store / "Tiny-Chat-0.1B-4bit"
    assert result.quantized_path == quant and result.path == store / "Tiny-Chat-0.1B"
    config = json.loads((quant / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 64
    assert read_source(quant)["hub_id"] == REPO and read_source(quant)["bits"] == 4
    assert (quant / "tokenizer.json").is_file() and not list_partial(store)
    model, _ = load_model(quant)
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
    full, _ = load_model(result.path)
    tokens = mx.array([[1, 2, 3, 4, 5, 6]])
    # 4-bit weights change the logits a little, not wholesale
    a, b = full(tokens), model(tokens)
    rel = (mx.linalg.norm(a - b) / mx.linalg.norm(a)).item()
    assert 0 < rel < 0.5
    assert SOURCE_FILE in {p.name for p in quant.iterdir()}
