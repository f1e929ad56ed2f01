"""A stand-in for the Hugging Face hub's write API on 127.0.0.1, for `mlxsft push` tests.

Implements what huggingface_hub's `create_repo` + `upload_folder` call (seen from the
real client): POST /api/repos/create, /api/validate-yaml, /api/models/{repo}/preupload/{rev}
(every file "regular", so contents travel inline) and /api/models/{repo}/commit/{rev}
(NDJSON: a header line, then one line per file with base64 content). It can refuse the
repository (403) or drop the connection during the commit.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class UploadHub:
    def __init__(self, refuse: bool = False, drop_commit: bool = False):
        self.refuse, self.drop_commit = refuse, drop_commit
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}  # committed files
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def post(self, path: str, data: bytes):
        """(status, JSON answer) for a POST, or None to drop the connection."""
        if path == "/api/repos/create":
            if self.refuse:
                return 403, {"error": "You don't have the rights to create a model under this namespace"}
            body = json.loads(data)
            self.created.append(body)
            return 200, {"url": f"{self.endpoint}/{body.get('organization')}/{body['name']}"}
        if path == "/api/validate-yaml":
            return 200, {}
        if "/preupload/" in path:
            files = json.loads(data)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if "/commit/" in path:
            if self.drop_commit:
                return None
            for line in data.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            return 200, {"commitUrl": f"{self.endpoint}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}
        return 404, {"error": "unknown endpoint"}

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                hub.requests.append(("GET", self.path, self.headers.get("Authorization")))
                self._send(404, {"error": "not here"})

            def do_POST(self):
                size = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(size) if size else b""
                hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
                answer = hub.post(self.path, data)
                if answer is None:
                    self.close_connection = True
                    self.connection.close()
                    return
                self._send(*answer)

        return Handler
