"""A local HTTP server on 127.0.0.1 speaking the parts of Together's fine-tuning API tunesmith uses,
as documented (docs.together.ai/reference) and as the official client calls them, so the tests run
the provider's own client against it (TOGETHER_BASE_URL):

- POST /v1/files (multipart form: purpose, file_name, file_type, checksum) -> 302 to an upload URL
  with X-Together-File-Id; PUT of the bytes there; POST /v1/files/{id}/preprocess -> the file;
- GET /v1/fine-tunes/models/limits?model_name=M -> the model's limits;
- POST /v1/fine-tunes (JSON) -> the job; GET /v1/fine-tunes/{id}; GET /v1/fine-tunes/{id}/events;
  POST /v1/fine-tunes/{id}/cancel.

Every /v1 request must carry `Authorization: Bearer <key>`; each request is logged (method, path).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def limits(model: str) -> dict[str, Any]:
    return {
        "model_name": model,
        "default_gradient_accumulation_steps": 1,
        "lora_training": {
            "default_rank": 8,
            "max_batch_size": 32,
            "max_batch_size_dpo": 16,
            "max_rank": 64,
            "min_batch_size": 1,
            "target_modules": MODULES,
        },
        "full_training": {"max_batch_size": 16, "max_batch_size_dpo": 8, "min_batch_size": 1},
        "max_learning_rate": 1.0,
        "max_num_checkpoints": 10,
        "max_num_epochs": 20,
        "max_num_evals": 10,
        "max_seq_length_dpo": 2048,
        "max_seq_length_sft": 4096,
        "merge_output_lora": True,
        "min_learning_rate": 1e-7,
        "min_max_seq_length": 32,
        "supports_full_training": True,
        "supports_reasoning": False,
    }


@dataclass
class FakeTogether:
    key: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fail_create: int = 0
    """Answer this many job creations with a 500 (an interrupted start)."""
    results: dict[str, bytes] = field(default_factory=dict)
    """The completed job's archives by checkpoint ("adapter", "merged"), packed as Together packs
    downloads (tar.gz: application/x-tar)."""
    drop_after: int | None = None
    """Break the next download's connection after this many bytes."""
    stall_after: int | None = None
    """Send this many bytes of the next download, then wait for `release` (a client killed meanwhile)."""
    release: threading.Event = field(default_factory=threading.Event)

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_PUT(self) -> None:
                fake.handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.root = f"http://127.0.0.1:{self.server.server_port}"
        return self.root + "/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ requests

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        self.requests.append((method, url.path))
        if url.path.startswith("/upload/") and method == "PUT":  # the presigned URL: no bearer token
            self.files[url.path.rsplit("/", 1)[1]]["content"] = body
            return _send(request, 200, {})
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _send(request, 401, {"error": {"message": "invalid api key"}})
        route = (method, *url.path.removeprefix("/v1/").split("/"))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if route == ("POST", "files"):
            return self._upload_url(request, body)
        if route[:2] == ("POST", "files") and route[-1] == "preprocess":
            return _send(request, 200, self._file(route[2]))
        if route == ("GET", "fine-tunes", "models", "limits"):
            return _send(request, 200, limits(query["model_name"]))
        if route == ("POST", "fine-tunes", "estimate-price"):
            tokens = sum(len(row) for row in _token_rows(self.files[json.loads(body)["training_file"]]["content"]))
            estimate = {"estimation_available": True, "allowed_to_proceed": True, "estimated_train_token_count": tokens}
            return _send(request, 200, {**estimate, "estimated_total_price": round(tokens * 5e-7, 6)})
        if route == ("POST", "fine-tunes"):
            return self._create(request, json.loads(body))
        if route[:2] == ("GET", "fine-tunes") and len(route) == 3:
            return _send(request, 200, self.jobs[route[2]])
        if route[:2] == ("GET", "fine-tunes") and route[-1] == "events":
            return _send(request, 200, {"data": self.events.get(route[2], [])})
        if route == ("GET", "finetune", "download"):
            return self._download(request, query)
        if route[:2] == ("POST", "fine-tunes") and route[-1] == "cancel":
            self.jobs[route[2]]["status"] = "cancelled"
            return _send(request, 200, self.jobs[route[2]])
        return _send(request, 404, {"error": {"message": f"no route {method} {url.path}"}})

    def _upload_url(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        kind = request.headers.get("Content-Type", "")
        fields = {name: f'name="{name}"'.encode() in body for name in ("purpose", "file_name", "file_type", "checksum")}
        if not kind.startswith("multipart/form-data") or not all(fields.values()):
            return _send(request, 400, {"error": {"message": f"expected a multipart form with {fields}"}})
        file_id = f"file-{len(self.files) + 1:04d}"
        name = body.split(b'name="file_name"')[1].split(b"\r\n\r\n", 1)[1].split(b"\r\n", 1)[0].decode()
        self.files[file_id] = {"filename": name, "content": None}
        request.send_response(302)
        request.send_header("Location", f"{self.root}/upload/{file_id}")
        request.send_header("X-Together-File-Id", file_id)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def _file(self, file_id: str) -> dict[str, Any]:
        entry = self.files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(entry["content"] or b""),
            "created_at": int(time.time()),
            "filename": entry["filename"],
            "FileType": entry["filename"].rsplit(".", 1)[-1],
            "Processed": True,
            "purpose": "fine-tune",
        }

    def _create(self, request: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if self.fail_create:
            self.fail_create -= 1
            return _send(request, 500, {"error": {"message": "try again"}})
        if body.get("training_file") not in self.files:
            return _send(request, 400, {"error": {"message": "unknown training_file"}})
        job_id = f"ft-{len(self.jobs) + 1:04d}"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.jobs[job_id] = {
            **body,
            "id": job_id,
            "status": "pending",
            "created_at": now,
            "updated_at": now,
            "model_output_name": f"user/{body['model'].split('/')[-1]}-{body.get('suffix', 'x')}",
            "adapter_output_name": None,
            "events": [],
        }
        return _send(request, 200, self.jobs[job_id])

    def _download(self, request: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        job = self.jobs.get(query.get("ft_id", ""))
        data = self.results.get(query.get("checkpoint", ""))
        if job is None or job["status"] != "completed" or data is None:
            return _send(request, 400, {"error": {"message": "not downloadable"}})
        start = 0
        ranged = request.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged[6:].split("-")[0])
            request.send_response(206)
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            request.send_response(200)
        request.send_header("Content-Type", "application/x-tar")
        request.send_header("Content-Length", str(len(data) - start))
        request.end_headers()
        body = data[start:]
        cut = self.drop_after if self.drop_after is not None else self.stall_after
        if cut is not None:
            stall = self.stall_after is not None
            self.drop_after = self.stall_after = None
            request.wfile.write(body[:cut])
            request.wfile.flush()
            if stall:
                self.release.wait(120)
            request.close_connection = True
            return
        request.wfile.write(body)

    def progress(self, job_id: str, steps: list[tuple[int, float]], status: str = "running") -> None:
        """The provider's job moves on: events with step and loss, and a new status."""
        self.jobs[job_id]["status"] = status
        self.events[job_id] = [
            {
                "object": "fine-tune-event",
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "level": "info",
                "message": f"Training progress: step {step}, loss {loss}",
                "type": "TRAINING_PROGRESS",
            }
            for step, loss in steps
        ]


def _token_rows(content: bytes | None) -> list[list[int]]:
    import io

    import pyarrow.parquet as pq

    return [] if not content else pq.read_table(io.BytesIO(content)).column("input_ids").to_pylist()


def _send(request: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
