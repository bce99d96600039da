"""`cased local`: the broker and S3 endpoint it starts answer with the settings it prints, and Ctrl-C
stops both quietly."""
import os
import select
import signal
import socket
import subprocess
import sys
import time

import boto3
from kafka import KafkaConsumer

from workers.cli.commands import main
from workers.clients import bootstrap, producer
from workers.cli.broker import EmbeddedBroker

EXPORTED = {"CASED_BROKER", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "CASED_S3_BUCKETS"}


def read_exports(process: subprocess.Popen, timeout_s: float = 60.0) -> dict[str, str]:
    """The `export NAME=VALUE` lines `cased local` prints once both servers are up, as a dict.

    The pipe is unbuffered (bufsize=0) so that select() sees every line not yet read."""
    exports: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while not EXPORTED <= exports.keys():
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"cased local printed {sorted(exports)} of its exports within {timeout_s}s"
        line = process.stdout.readline().decode()
        assert line, f"cased local exited with {process.wait()} before printing its exports"
        assert line.startswith("export "), line
        name, _, value = line.removeprefix("export ").strip().partition("=")
        exports[name] = value
    return exports


def listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def test_local_serves_a_broker_and_a_bucket_until_ctrl_c(tmp_path):
    env = {**os.environ, "CASED_PARTITIONS": "3"}
    for name in EXPORTED:  # the test's own S3 or broker settings must not leak into what is checked
        env.pop(name, None)
    stderr_path = tmp_path / "local.err"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "workers.cli", "local"], env=env,
                                   stdout=subprocess.PIPE, stderr=stderr, bufsize=0)
    try:
        exports = read_exports(process)
        broker = bootstrap(exports["CASED_BROKER"])[0]
        s3_address = exports["AWS_ENDPOINT_URL"].removeprefix("http://")

        consumer = KafkaConsumer(bootstrap_servers=[broker])
        try:
            assert {"images.in", "labels.out", "images.dlq"} <= consumer.topics()
            assert len(consumer.partitions_for_topic("images.in")) == 3  # CASED_PARTITIONS honoured
        finally:
            consumer.close()
        client = producer(exports["CASED_BROKER"])
        try:
            client.send("images.in", key=b"cam", value=b"x").get(10)
        finally:
            client.close()

        s3 = boto3.client("s3", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name=exports["AWS_DEFAULT_REGION"],
                          aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"])
        bucket = exports["CASED_S3_BUCKETS"]
        assert bucket == "frames"
        s3.put_object(Bucket=bucket, Key="cam1/0001.jpg", Body=b"frame")
        assert s3.get_object(Bucket=bucket, Key="cam1/0001.jpg")["Body"].read() == b"frame"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in stderr_path.read_text(), stderr_path.read_text()
    assert not listening(broker) and not listening(s3_address)  # both servers stopped with it


def test_a_port_in_use_is_one_line_naming_the_flag(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["local", "--s3-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cased: error: --s3-port {port}:") and len(err.splitlines()) == 1, err


def test_the_embedded_brokers_temporary_log_goes_with_it(tmp_path):
    """A log of its own choosing is removed when the broker is stopped; one given is kept."""
    with EmbeddedBroker() as broker:
        temporary = broker.log_path
        assert temporary.exists()
    assert not temporary.exists()
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        pass
    assert "listening on" in (tmp_path / "broker.log").read_text()
