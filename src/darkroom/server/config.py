"""Server configuration: where it listens, who may talk to it, and the limits it enforces on requests."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

#: What `--listen` without an address binds (ComfyUI's choice: every IPv4 interface).
LISTEN_ALL = "0.0.0.0"
DEFAULT_PORT = 8188


class ServerConfigError(ValueError):
    """A server configuration that must not start (e.g. listening on the network without a token)."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one request may ask for; larger values are answered with 400 naming the field."""

    max_width: int = 8192
    max_height: int = 8192
    max_steps: int = 1000
    max_batch_size: int = 64  # images per request (A1111: batch_size × n_iter; ComfyUI: a latent's batch_size)
    max_prompt_chars: int = 20_000  # any single text input
    max_nodes: int = 2_000  # nodes in one workflow
    max_body_bytes: int = 64 * 1024 * 1024  # JSON bodies (A1111 requests carry base64 images)
    max_upload_bytes: int = 100 * 1024 * 1024  # ComfyUI's --max-upload-size default (100 MB)
    max_image_pixels: int = 64 * 1024 * 1024  # decoded images (uploads, init images, masks): bomb guard
    max_history: int = 10_000  # ComfyUI's MAXIMUM_HISTORY_SIZE


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost` (with or without brackets)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_app` needs beyond the model settings."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None  # access token (HTTP Bearer, Basic password, X-Darkroom-Token, ?token=)
    data_dir: Path = Path("data")  # queue/history database, input/, temp/, options
    output_dir: Path | None = None  # default: <data_dir>/output
    cors_origins: tuple[str, ...] = ()  # allowed cross-origin pages ("*" for any); empty: ComfyUI's origin check
    preview_method: str = "latent2rgb"  # "none" or "latent2rgb" (cheap latent → RGB step previews)
    preview_size: int = 512  # longest side of preview frames
    limits: Limits = field(default_factory=Limits)
    worker: bool = True  # start the generation worker (tests of the HTTP layer alone may turn it off)

    @property
    def input_dir(self) -> Path:
        return self.data_dir / "input"

    @property
    def temp_dir(self) -> Path:
        return self.data_dir / "temp"

    @property
    def resolved_output_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else self.data_dir / "output"

    @property
    def database(self) -> Path:
        return self.data_dir / "darkroom.sqlite3"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def check(self) -> ServerConfig:
        """Refuse unsafe or impossible settings with a message that says what to do; returns self."""
        if not self.loopback and not self.token:
            raise ServerConfigError(
                f"refusing to listen on {self.host}: anyone on the network could use this machine. "
                "Set an access token with --token TOKEN (or DARKROOM_TOKEN), or listen on 127.0.0.1 only.")
        if self.token is not None and len(self.token) < 8:
            raise ServerConfigError("the access token must be at least 8 characters long")
        if not 0 <= self.port <= 65535:
            raise ServerConfigError(f"port must be between 0 and 65535 (got {self.port})")
        if self.preview_method not in ("none", "latent2rgb", "auto"):
            raise ServerConfigError(f"unknown preview method {self.preview_method!r}; use none or latent2rgb")
        return self
