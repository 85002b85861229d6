"""Server settings. Only the CLI reads argv and the environment."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 5000
    upstream: str | None = None
    ca_file: str | None = None
    repository_prefix: str = ""
    data_dir: str = "./data"
    max_body_size: int = 64 * 1024 * 1024
    max_concurrent_pushes: int = 4
    push_queue_wait: float = 10.0
    log_level: str = "info"
    # Authentication and TLS (see README "Authentication").
    token_secret: str | None = None
    token_ttl: int = 12 * 3600
    registry_username: str | None = None
    registry_password: str | None = field(default=None, repr=False)
    docker_config: str | None = None
    anonymous_read: bool = False
    service_write: bool = False
    tls_insecure: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    redis_url: str | None = None
    cache_ttl: float = 5.0
    # Each registry call, retries included, answers within upstream_timeout seconds (0: no
    # deadline); a blob stream slower than upstream_min_rate bytes/s over the window is cut.
    upstream_timeout: float = 10.0
    upstream_min_rate: int = 16 * 1024
    # Not flags (yet): tuning with sensible defaults.
    upstream_rate_window: float = 10.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    registry_binary: str = "docker-registry"
    # Security (see README "Security defaults").
    insecure_open: bool = False
    # ChartMuseum's --disable-force-overwrite: its upload API ignores ?force (409 on an existing version).
    disable_force_overwrite: bool = False
    # Hand the client the registry's redirect to storage for blob downloads (README "Blob redirects").
    blob_redirect: bool = False
    # The HTTP edge (cnr_oci/server.py and bodies.py explain the numbers).
    max_connections: int = 1000
    header_timeout: float = 10.0
    body_grace: float = 10.0
    body_min_rate: float = 16 * 1024.0
    # Server processes on one port (SO_REUSEPORT); more than one needs redis_url (cnr_oci/workers.py).
    workers: int = 1
    # The blob cache (README "Caching"): bytes held in all, and the largest blob kept.
    blob_cache_size: int = 256 * 1024 * 1024
    blob_cache_max: int = 1024 * 1024
    # Log lines as text or JSON (README "Logs").
    log_format: str = "text"
