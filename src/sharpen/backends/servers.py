"""`openai:URL#MODEL[;key=value...]`: the spec of an OpenAI-compatible server, parsed without
touching the network (`sharpen.backends.openai` is the client)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sharpen.core.errors import ConfigError

PREFIX = "openai:"


@dataclass(frozen=True)
class ServerSpec:
    """A parsed `openai:URL#MODEL[;key=value...]` spec."""

    base_url: str
    model: str
    tokenizer: str | None = None
    in_flight: int = 16
    timeout: float = 120.0
    retries: int = 4
    sampling: str = "auto"
    logprobs: str = "auto"

    @classmethod
    def parse(cls, spec: str) -> ServerSpec:
        fix = "(fix: --model openai:http://HOST:PORT/v1#MODEL_NAME, e.g. openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-0.5B-Instruct)"
        if not spec.startswith(PREFIX):
            raise ConfigError(f"not an openai: model spec: {spec!r} {fix}")
        url, sep, rest = spec[len(PREFIX):].partition("#")
        if not sep or not rest:
            raise ConfigError(f"bad model spec {spec!r}: no model name after '#' {fix}")
        if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
            raise ConfigError(f"bad model spec {spec!r}: the server URL must start with http:// or https:// {fix}")
        model, *opts = rest.split(";")
        if not model:
            raise ConfigError(f"bad model spec {spec!r}: empty model name {fix}")
        kw: dict[str, Any] = {}
        for o in opts:
            key, eq, value = o.partition("=")
            if not eq or key not in ("tokenizer", "in_flight", "timeout", "retries", "sampling", "logprobs"):
                raise ConfigError(f"bad option {o!r} in {spec!r} (fix: tokenizer=DIR, in_flight=N, timeout=SECONDS, "
                                  "retries=N, sampling=auto|standard|generation_config or logprobs=auto|off)")
            if key == "sampling" and value not in ("auto", "standard", "generation_config"):
                raise ConfigError(f"bad option {o!r} in {spec!r} (fix: sampling=auto, standard or generation_config)")
            if key == "logprobs" and value not in ("auto", "off"):
                raise ConfigError(f"bad option {o!r} in {spec!r} (fix: logprobs=auto or off)")
            try:
                kw[key] = value if key in ("tokenizer", "sampling", "logprobs") else int(value) if key in ("in_flight", "retries") else float(value)
            except ValueError:
                raise ConfigError(f"bad option {o!r} in {spec!r} (fix: a number)") from None
        if kw.get("in_flight", 1) < 1 or kw.get("timeout", 1) <= 0 or kw.get("retries", 0) < 0:
            raise ConfigError(f"bad option in {spec!r} (fix: in_flight >= 1, timeout > 0, retries >= 0)")
        return cls(url.rstrip("/"), model, **kw)


def is_server_spec(model: str) -> bool:
    return isinstance(model, str) and model.startswith(PREFIX)
