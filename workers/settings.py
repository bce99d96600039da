"""One settings object, read from environment variables; CLI flags override it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Settings:
    model: str = "tiny"  # 'tiny', an open_clip architecture (e.g. ViT-L-14) or a checkpoint folder
    pretrained: str | None = None  # open_clip pretrained tag (e.g. openai) or checkpoint file
    database: str = "tiny"  # 'tiny', a database folder or s3://bucket/prefix
    device: str = "auto"  # auto: CUDA with fp16 when present, else CPU
    cache_dir: str | None = None  # where s3:// databases and vocabulary embeddings are cached
    k: int = 10
    search: str = "auto"  # auto: exact on a GPU when the caption embeddings fit search_memory_mb, else faiss
    search_memory_mb: int = 4096  # GPU memory the exact search may hold (fp16: 2 B x dim per caption)
    alpha: float = 0.7
    top_n: int = 5
    # Streaming worker
    broker: str = "kafka://127.0.0.1:9092"  # comma-separated kafka://HOST:PORT list
    app_id: str = "cased-workers"  # Faust app id: the consumer group and the table changelog prefix
    images_topic: str = "images.in"
    labels_topic: str = "labels.out"
    dead_letter_topic: str = "images.dlq"
    partitions: int = 8  # partitions of topics the worker creates; scale replicas up to this
    batch_size: int = 16
    fetch_wait_ms: int = 100  # longest a fetch waits at the broker for new images.in records
    max_wait_s: float = 0.05  # flush a partial batch after this long
    decode_threads: int = 0  # threads decoding images; 0: one per CPU the worker may run on
    jpeg_decoder: str = "auto"  # auto: torchvision on a GPU (nvJPEG, batched), else pil; or pil, torchvision
    torch_threads: int = 0  # torch's intra-op threads; 0: 1, or one per CPU for a CPU-bound encoder
    history_policy: str = "live"  # default per-stream policy: live (scenes) or upload (naming only)
    history_similarity: float = 0.6  # cosine to the scene's anchor embedding from which a frame is the scene's
    history_margin: float = 0.05  # lead in the scene's votes a challenger needs to take the label
    history_patience: int = 1  # frames that must agree with a far frame before a wary stream changes scene
    history_patience_s: float = 10.0  # a far frame this long after the previous one changes scene at once
    fetch_timeout_s: float = 10.0
    fetch_retries: int = 2
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    s3_buckets: str = ""  # comma-separated buckets workers may read; empty: none
    file_root: str = ""  # folder file:// sources may read from; empty: none
    allow_private_hosts: int = 0  # 1: let http(s) reach loopback/private addresses (tests, on-prem)
    web_port: int = 6066  # health and status endpoint
    # Kafka security: workers/security.py checks these and maps them onto every Kafka client.
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512; used by SASL_* only
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)  # environment only, never logged
    kafka_ca_file: str | None = None  # PEM CA bundle for SSL / SASL_SSL; unset: the system CAs
    kafka_cert_file: str | None = None  # PEM client certificate for mutual TLS (may hold the key too)
    kafka_key_file: str | None = None  # the client certificate's private key, when in its own file

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        """CASED_<FIELD> for each field, e.g. CASED_MODEL=ViT-L-14 CASED_PRETRAINED=openai."""
        env = os.environ if environ is None else environ
        values = {}
        for setting in fields(cls):
            raw = env.get(f"CASED_{setting.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = setting.type if isinstance(setting.type, str) else setting.type.__name__
            try:
                values[setting.name] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
            except ValueError as err:
                raise ValueError(f"CASED_{setting.name.upper()}={raw!r} is not a valid {kind}") from err
        return cls(**values)
