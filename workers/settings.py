"""Every setting defined once: name, type, default, bounds, help. The environment variable (CASED_<NAME>),
the command-line flag (--name-with-dashes) and the checks derive from here; the Helm chart's values
schema is tested against it (tests/deploy/test_chart.py).

Settings are checked where they are read: `Settings(...)`, `Settings.from_env()` and
`dataclasses.replace(settings, ...)` raise SettingError, one line naming the setting, what was wrong,
and where to set it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cased_core.method.gate import BOUNDS as GATE_BOUNDS, GatePolicy
from cased_core.method.history import BOUNDS as HISTORY_BOUNDS, HistoryPolicy
from cased_core.options import HISTORY_POLICIES, JPEG_DECODERS, SEARCHES, ClassifierConfig
from topics import events as ev
from workers.decode import ImageLimits
from workers.fetch import FetchLimits
from workers.logs import FORMATS as LOG_FORMATS, LEVELS as LOG_LEVELS

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")  # what Faust, aiokafka and kafka-python all speak
_BROKER = re.compile(r"^(kafka://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class SettingError(ValueError):
    """A setting out of its bounds, of the wrong type, or not one of its choices."""


def setting(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, choices: tuple | None = None, secret: bool = False, flag: bool = True):
    """A Settings field with its help and bounds (`above`: exclusive minimum); `flag`: False for
    settings given by environment only (secrets: command lines leak into ps and shell history)."""
    return field(default=default, repr=not secret,
                 metadata={"help": help, "minimum": minimum, "maximum": maximum, "above": above,
                           "choices": choices, "flag": flag and not secret})


def bounds(table: dict, name: str) -> dict:
    """A setting's bounds, as the policy it configures defines them (`table`: its BOUNDS)."""
    low, high, _ = table[name]
    return {"minimum": low, "maximum": high}


@dataclass(frozen=True)
class Settings:
    model: str = setting("tiny", "'tiny', an open_clip architecture (e.g. ViT-L-14) or a checkpoint folder")
    pretrained: str | None = setting(None, "open_clip pretrained tag (e.g. openai) or checkpoint file")
    database: str = setting("tiny", "'tiny', a database folder or s3://bucket/prefix")
    device: str = setting("auto", "auto (CUDA with fp16 when present, else CPU), cpu, cuda or cuda:N")
    cache_dir: str | None = setting(None, "where s3:// databases and vocabulary embeddings are cached "
                                    "(default ~/.cache/cased-stream)")
    # Defaults of the knobs the core's and the fetcher's configs also have come from those configs.
    k: int = setting(ClassifierConfig.k, "captions retrieved per image", minimum=1, maximum=1000)
    search: str = setting("auto", "caption search: exact (on the model's device), faiss (the database's index), "
                          "auto (exact on a GPU when the embeddings fit its free memory: search_memory_mb)", choices=SEARCHES)
    search_memory_mb: int = setting(0, "most GPU memory the exact search may hold, MiB (fp16: 2 B x dim per caption); "
                                    "0: what the device has free once the model is loaded, less a fifth of the "
                                    "card (at least 2 GiB) for the rest of a batch's work", minimum=0)
    alpha: float = setting(ClassifierConfig.alpha, "weight of image-to-name against caption-centroid-to-name similarity",
                           minimum=0, maximum=1)
    top_n: int = setting(ClassifierConfig.top_n, "candidates reported per label", minimum=1)
    # Streaming worker
    broker: str = setting("kafka://127.0.0.1:9092", "Kafka bootstrap servers: kafka://HOST:PORT[,HOST:PORT...]")
    app_id: str = setting("cased-workers", "consumer group and table changelog prefix")
    images_topic: str = setting(ev.IMAGES_IN, "topic of image events")
    labels_topic: str = setting(ev.LABELS_OUT, "topic of label events")
    dead_letter_topic: str = setting(ev.DEAD_LETTER, "topic of dead letters")
    partitions: int = setting(8, "partitions of topics the worker creates; scale replicas up to this", minimum=1)
    batch_size: int = setting(16, "images per model batch", minimum=1, maximum=4096)
    fetch_wait_ms: int = setting(100, "longest a fetch waits at the broker for new images.in records", minimum=1)
    max_wait_s: float = setting(0.05, "flush a partial batch after this long", above=0)
    decode_threads: int = setting(0, "threads decoding images; 0: one per CPU the worker may run on", minimum=0)
    jpeg_decoder: str = setting("auto", "auto (torchvision on a GPU, else pil), pil, or torchvision",
                                choices=JPEG_DECODERS)
    torch_threads: int = setting(0, "torch's intra-op threads; 0: chosen at warm-up", minimum=0)
    history_policy: str = setting(HistoryPolicy.mode, "default policy of streams whose events do not name one: "
                                  "steady (a change must be confirmed), fast (no lag, some flicker) or upload "
                                  "(naming only)", choices=HISTORY_POLICIES)
    history_similarity: float = setting(HistoryPolicy.similarity, "cosine to the scene's anchor embedding from which a frame is "
                                        "the scene's", **bounds(HISTORY_BOUNDS, "similarity"))
    history_margin: float = setting(HistoryPolicy.margin, "lead in the scene's votes a challenger needs to take the label",
                                    **bounds(HISTORY_BOUNDS, "margin"))
    history_patience: int = setting(HistoryPolicy.patience, "frames that must agree with a far frame before the label "
                                    "changes (steady, or fast once wary)", **bounds(HISTORY_BOUNDS, "patience"))
    history_patience_s: float = setting(HistoryPolicy.patience_s, "a far frame this many seconds after the previous one changes "
                                        "scene at once", **bounds(HISTORY_BOUNDS, "patience_s"))
    history_stillness: float = setting(HistoryPolicy.stillness, "steady: cosine to the first far frame within which the "
                                       "frames confirming a change must be (a new scene holds still)",
                                       **bounds(HISTORY_BOUNDS, "stillness"))
    gate_frames: int = setting(GatePolicy.max_frames, "a live stream's frame that did not change since its last "
                               "classified frame reuses that result; classify at least every this many frames "
                               "(1: every frame, the gate off)", **bounds(GATE_BOUNDS, "max_frames"))
    gate_seconds: float = setting(GatePolicy.max_s, "... and at least every this many seconds of event time",
                                  **bounds(GATE_BOUNDS, "max_s"))
    fetch_timeout_s: float = setting(FetchLimits.timeout_s, "time limit of one image fetch", above=0)
    fetch_retries: int = setting(FetchLimits.retries, "retries of a fetch that failed for a transient reason", minimum=0)
    max_bytes: int = setting(FetchLimits.max_bytes, "largest image accepted, in bytes", minimum=1)
    max_pixels: int = setting(ImageLimits.max_pixels, "largest image accepted, in pixels", minimum=1)
    s3_buckets: str = setting("", "comma-separated buckets workers may read; empty: none")
    file_root: str = setting("", "folder file:// sources may read from; empty: none")
    allow_private_hosts: int = setting(0, "1: let http(s) reach loopback/private addresses (tests, on-prem)",
                                       choices=(0, 1))
    web_port: int = setting(6066, "the worker's web port: /ready, /live, /status and /metrics", minimum=1,
                            maximum=65535)
    web_host: str = setting("0.0.0.0", "address the web port listens on: all interfaces by default, since the "
                            "orchestrator's probes and Prometheus reach a pod at its own address; 127.0.0.1 keeps it "
                            "on this machine")
    log_level: str = setting("info", "level of the cased loggers (a worker's start is a few info lines); the "
                             "libraries' warnings and errors are logged too, everything at debug", choices=LOG_LEVELS)
    log_format: str = setting("text", "text (one line a record) or json (one object a line: time, level, logger, "
                              "message, event_id and stream_id where known), for log collectors", choices=LOG_FORMATS)
    outage_budget_s: float = setting(300.0, "seconds a worker stays paused by a dependency failing for everyone "
                                     "(storage, model, memory) before /live fails and it is restarted", above=0)
    # Kafka security: workers/security.py maps these onto every Kafka client.
    kafka_security_protocol: str = setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
                                           choices=SECURITY_PROTOCOLS)
    kafka_sasl_mechanism: str = setting("PLAIN", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)",
                                        choices=SASL_MECHANISMS)
    kafka_sasl_username: str | None = setting(None, "SASL username", flag=False)
    kafka_sasl_password: str | None = setting(None, "SASL password (environment only, never logged)", secret=True)
    kafka_ca_file: str | None = setting(None, "PEM CA bundle the brokers' certificates are checked against "
                                        "(SSL, SASL_SSL); unset: the system CAs")
    kafka_cert_file: str | None = setting(None, "PEM client certificate for mutual TLS (may hold the key too)")
    kafka_key_file: str | None = setting(None, "the client certificate's private key, when in its own file")

    def __post_init__(self):
        for name in ("kafka_security_protocol", "kafka_sasl_mechanism"):  # Kafka's names, in any case
            object.__setattr__(self, name, getattr(self, name).strip().upper())
        for f in fields(self):
            check(f, getattr(self, f.name))
        # One spelling for every client: the scheme once, in front (Faust needs it; kafka-python gets the
        # HOST:PORT list). kafka://a:1,kafka://b:2 and a:1,b:2 are accepted too.
        hosts = [part.strip().removeprefix("kafka://") for part in self.broker.split(",")]
        object.__setattr__(self, "broker", "kafka://" + ",".join(hosts))

    # -- the components' configs, each mapped from the settings here and nowhere else ---------------

    def classifier_config(self) -> ClassifierConfig:
        return ClassifierConfig(k=self.k, alpha=self.alpha, top_n=self.top_n)

    def history(self) -> HistoryPolicy:
        return HistoryPolicy(mode=self.history_policy, similarity=self.history_similarity, margin=self.history_margin,
                             patience=self.history_patience, patience_s=self.history_patience_s,
                             stillness=self.history_stillness)

    def gate(self) -> GatePolicy:
        return GatePolicy(max_frames=self.gate_frames, max_s=self.gate_seconds)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels)

    def fetch_limits(self) -> FetchLimits:
        return FetchLimits(
            max_bytes=self.max_bytes, timeout_s=self.fetch_timeout_s, retries=self.fetch_retries,
            allow_private=bool(self.allow_private_hosts),
            allowed_buckets=frozenset(b.strip() for b in self.s3_buckets.split(",") if b.strip()),
            file_root=Path(self.file_root) if self.file_root else None)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        """CASED_<NAME> for each setting, e.g. CASED_MODEL=ViT-L-14 CASED_PRETRAINED=openai.

        Raises:
            SettingError: a value of the wrong type or out of bounds, named by its variable.
        """
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = parse(f, raw)
            except SettingError as err:
                raise SettingError(f"{env_name(f.name)}={raw!r}: {err}") from None
        return cls(**values)


def env_name(name: str) -> str:
    return f"CASED_{name.upper()}"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def kind(f) -> str:
    """'int', 'float' or 'str' (a setting that may be unset is still its value's kind)."""
    text = f.type if isinstance(f.type, str) else f.type.__name__
    return text.split("|")[0].strip()


def parse(f, raw: str):
    """The value of setting `f` spelled `raw` (from the environment or a flag)."""
    try:
        return {"int": int, "float": float}.get(kind(f), str)(raw)
    except ValueError:
        raise SettingError(f"not a valid {kind(f)}") from None


def problem(f, value) -> str | None:
    """What is wrong with `value` for setting `f`, or None when it is allowed."""
    meta = f.metadata
    if value is None:
        return None
    if meta["choices"] is not None and value not in meta["choices"]:
        return f"choose one of {', '.join(map(str, meta['choices']))}"
    if meta["minimum"] is not None and value < meta["minimum"]:
        return f"must be at least {meta['minimum']}"
    if meta["maximum"] is not None and value > meta["maximum"]:
        return f"must be at most {meta['maximum']}"
    if meta["above"] is not None and value <= meta["above"]:
        return f"must be more than {meta['above']}"
    if f.name == "broker" and not _brokers_ok(value):
        return "expected kafka://HOST:PORT, several separated by commas (no http://, tcp:// or path)"
    return None


def check(f, value) -> None:
    """Raises SettingError naming `f`, its variable and its flag, when `value` is not allowed."""
    wrong = problem(f, value)
    if wrong:
        where = env_name(f.name) + (f" or {flag_name(f.name)}" if f.metadata["flag"] else "")
        raise SettingError(f"{f.name} {value!r}: {wrong} (set with {where})")


def _brokers_ok(value: str) -> bool:
    return all(_BROKER.match(part.strip()) for part in value.split(","))


def definition(name: str):
    """The dataclass field of setting `name`."""
    return next(f for f in fields(Settings) if f.name == name)


def add_flags(parser, settings: Settings, *names: str, aliases: dict[str, str] | None = None) -> None:
    """Flags for settings `names` (--name-with-dashes, plus `aliases[name]` if any), their help ending
    with the variable and the value now in force; unset flags leave the environment's value
    (see `apply_flags`).

    Examples:
        >>> import argparse
        >>> p = argparse.ArgumentParser()
        >>> add_flags(p, Settings(), "k")
        >>> apply_flags(p.parse_args(["--k", "3"]), Settings()).k
        3
    """
    for name in names:
        f = definition(name)
        meta = f.metadata
        options = [flag_name(name)] + ([aliases[name]] if aliases and name in aliases else [])
        now = getattr(settings, name)
        # A setting with choices shows them (--allow-private-hosts {0,1}), as argparse's own choices do.
        metavar = "{" + ",".join(map(str, meta["choices"])) + "}" if meta["choices"] else name.split("_")[-1].upper()
        parser.add_argument(*options, dest=name, default=None, metavar=metavar,
                            type=lambda raw, f=f: _flag_value(f, raw),
                            help=f"{meta['help']} [env {env_name(name)}"
                                 + (f", now {now}]" if now not in (None, "") else "]"))


def _flag_value(f, raw: str):
    """argparse's `type` for setting `f`: its error names the flag and the value itself."""
    import argparse

    try:
        value = parse(f, raw)
    except SettingError as err:
        raise argparse.ArgumentTypeError(f"{raw!r}: {err}") from None
    wrong = problem(f, value)
    if wrong:
        raise argparse.ArgumentTypeError(f"{value!r}: {wrong}")
    return value


def apply_flags(args, settings: Settings) -> Settings:
    """`settings` with the flags given on the command line applied (checked again by `Settings`)."""
    overrides = {f.name: getattr(args, f.name) for f in fields(Settings) if getattr(args, f.name, None) is not None}
    return replace(settings, **overrides)
