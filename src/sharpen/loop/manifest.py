"""The run manifest: stage -> status, artifact paths and content hashes, written atomically.

Resume = read the manifest, skip finished stages; a stage that was running when the process died
restarts and skips the problems already in its partial JSONL."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from sharpen.core.io import atomic_write_json


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


class Manifest:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "manifest.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def get(self, stage: str) -> dict[str, Any]:
        return self.data["stages"].get(stage, {})

    def start(self, stage: str) -> None:
        self.data["stages"][stage] = {"status": "running", "started": time.time()}
        self.save()

    def finish(self, stage: str, artifacts: dict[str, str], **info: Any) -> None:
        entry = self.data["stages"].setdefault(stage, {})
        root = self.path.parent
        entry.update(
            status="done",
            finished=time.time(),
            artifacts=artifacts,
            hashes={k: file_hash(root / v) for k, v in artifacts.items() if (root / v).exists()},
            **info,
        )
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)
