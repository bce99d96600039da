"""Kafka security: the CASED_KAFKA_* settings, checked once and mapped onto each Kafka client used here.

- Faust (the worker's consumer, producer and topic admin): `faust_credentials` -> `broker_credentials`.
- kafka-python (`cased publish`, `cased labels`, topic creation): `kafka_python_options` -> keyword args.
- aiokafka (plain consumers or producers beside Faust): `aiokafka_options` -> keyword args.

PLAINTEXT, the default, maps to nothing (None, {}), so clients behave exactly as without this module.
TLS always verifies the broker's certificate chain and host name; one `ssl.SSLContext`, built the same
way for all three clients (aiokafka's `create_ssl_context`: `ssl.create_default_context`, TLS 1.2 or
newer), trusts CASED_KAFKA_CA_FILE when set, the system CAs otherwise. The SASL password comes from the
environment only: it is left out of reprs and never quoted in an error.
"""
from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.settings import Settings

log = logging.getLogger("cased.kafka")


@dataclass(frozen=True)
class KafkaSecurity:
    """Checked, normalised Kafka security settings."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None  # set for SASL_* only
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that verifies the broker (None without TLS)."""
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context

        try:
            context = create_ssl_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as err:
            raise ValueError(f"CASED_KAFKA_CA_FILE={self.ca_file}: not a readable PEM CA bundle ({err}); "
                             "point it at the CA certificate(s) that signed the brokers' certificates") from err
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as err:
                raise ValueError(f"CASED_KAFKA_CERT_FILE={self.cert_file}"
                                 + (f", CASED_KAFKA_KEY_FILE={self.key_file}" if self.key_file else "")
                                 + f": not a PEM client certificate and its unencrypted private key ({err})") from err
        return context


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The settings' Kafka security, checked; a ValueError names the variable at fault and the fix."""
    # The protocol and mechanism are one of Kafka's (upper case): Settings checked them when read.
    protocol, mechanism = settings.kafka_security_protocol, settings.kafka_sasl_mechanism
    username, password = settings.kafka_sasl_username or None, settings.kafka_sasl_password or None
    security = KafkaSecurity(protocol, mechanism if protocol.startswith("SASL_") else None, username, password,
                             settings.kafka_ca_file or None, settings.kafka_cert_file or None,
                             settings.kafka_key_file or None)
    if security.sasl:
        missing = [name for name, value in (("CASED_KAFKA_SASL_USERNAME", username),
                                            ("CASED_KAFKA_SASL_PASSWORD", password)) if not value]
        if missing:
            raise ValueError(f"CASED_KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}: set them in "
                             "the environment from a secret (Helm: kafka.security.sasl.existingSecret)")
        if protocol == "SASL_PLAINTEXT" and mechanism == "PLAIN":
            log.warning("CASED_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT with PLAIN sends the password unencrypted; "
                        "use SASL_SSL outside a trusted network")
    elif username or password:
        raise ValueError(f"CASED_KAFKA_SASL_USERNAME / CASED_KAFKA_SASL_PASSWORD are set but "
                         f"CASED_KAFKA_SECURITY_PROTOCOL={protocol} sends no credentials: set it to SASL_SSL "
                         "(or SASL_PLAINTEXT), or unset them")
    for name, path, what in (("CASED_KAFKA_CA_FILE", security.ca_file, "the CA bundle"),
                             ("CASED_KAFKA_CERT_FILE", security.cert_file, "the client certificate"),
                             ("CASED_KAFKA_KEY_FILE", security.key_file, "the client key")):
        if path is None:
            continue
        if not security.tls:
            raise ValueError(f"{name} is set but CASED_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS: "
                             f"set it to SSL or SASL_SSL, or unset {name}")
        if not Path(path).is_file():
            raise ValueError(f"{name}={path}: no such file; mount {what} there"
                             + (" (Helm: kafka.security.tls.caSecret), or unset it to trust the system CAs"
                                if name == "CASED_KAFKA_CA_FILE" else ""))
    if security.key_file and not security.cert_file:
        raise ValueError("CASED_KAFKA_KEY_FILE is set without CASED_KAFKA_CERT_FILE: set the client certificate "
                         "the key belongs to")
    return security


def faust_credentials(settings: Settings):
    """Faust's `broker_credentials`: SASLCredentials (SASL_*; with an SSL context for SASL_SSL),
    SSLCredentials (SSL) or None (PLAINTEXT). Faust's aiokafka driver turns them into aiokafka's
    security_protocol / sasl_* / ssl_context for its consumer, producer and admin requests."""
    import faust

    security = kafka_security(settings)
    context = security.ssl_context()
    if security.sasl:
        return faust.SASLCredentials(username=security.username, password=security.password,
                                     mechanism=security.mechanism, ssl_context=context)
    if security.tls:
        return faust.SSLCredentials(context)
    return None


def _client_options(settings: Settings) -> dict[str, Any]:
    security = kafka_security(settings)
    if security.protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.sasl:
        options.update(sasl_mechanism=security.mechanism, sasl_plain_username=security.username,
                       sasl_plain_password=security.password)
    if security.tls:
        options["ssl_context"] = security.ssl_context()
    return options


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaProducer / KafkaConsumer / KafkaAdminClient ({} for
    PLAINTEXT). TLS goes through `ssl_context` (kafka-python then ignores its ssl_cafile & co.), so
    kafka-python verifies exactly as aiokafka and Faust do, but at most TLS 1.2: kafka-python 2.x
    drops a connection that turns readable before its first request, which is what a TLS 1.3 broker's
    post-handshake session tickets do (Kafka 2.6+ on Java 11+; kafka-python issues #2160, #2369): the
    admin client then fails "Connection to N failed" (seen here). Brokers accept TLS 1.2 by default."""
    options = _client_options(settings)
    if "ssl_context" in options:
        options["ssl_context"].maximum_version = ssl.TLSVersion.TLSv1_2
    return options


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's AIOKafkaConsumer / AIOKafkaProducer / admin client ({} for
    PLAINTEXT): security_protocol, sasl_mechanism, sasl_plain_username, sasl_plain_password, ssl_context."""
    return _client_options(settings)
