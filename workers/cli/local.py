"""`cased local`: a Kafka broker and an S3 endpoint on loopback, to try `cased worker`, `cased publish`
and `cased labels` by hand.

Starts the embedded broker (Tansu, `workers/broker.py`) and moto's S3 server, creates the topics and a
bucket, prints the environment the other commands need as `export` lines on stdout (everything else
goes to stderr, so `cased local > local.env` leaves a file to `source`), and runs until Ctrl-C.
Both servers keep their data in memory: stopping them forgets every record and object.
"""
from __future__ import annotations

import signal
import sys

from workers.cli.broker import EmbeddedBroker
from workers.clients import ensure_topics
from workers.ports import port_problem
from workers.settings import Settings

# moto accepts any credentials; boto3 only needs some to sign its requests.
ACCESS_KEY = "local"
REGION = "us-east-1"


def check_port(port: int, flag: str) -> None:
    """Refuse a loopback port that something else holds, before a server fails on it less clearly
    (moto's server thread would die and leave its start waiting forever).

    Args:
        port: the port asked for; 0 (a free one) is always fine.
        flag: the option that asked for it, named in the error.

    Raises:
        ValueError: the port is out of range or taken.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"{flag} {port}: a port is between 1 and 65535 (0: any free one)")
    problem = port_problem("127.0.0.1", port)
    if problem:
        raise ValueError(f"{flag} {port}: 127.0.0.1:{port} is not free ({problem}); "
                         "pick another port, or 0 for any free one")


def start_s3(port: int, bucket: str):
    """moto's S3 server on 127.0.0.1:`port` (0: a free one) holding an empty `bucket`.

    Returns:
        (the server, to `stop()`; its endpoint URL).

    Raises:
        ValueError: S3 refused the bucket (its name).
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        # Bound to port 0, the server chose its port itself: ask it rather than race for a free one.
        url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                     aws_secret_access_key=ACCESS_KEY).create_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as err:
        server.stop()
        raise ValueError(f"--bucket {bucket}: {err}") from err
    except BaseException:
        server.stop()
        raise
    return server, url


def exports(broker_url: str, s3_url: str, bucket: str) -> list[str]:
    """The shell lines that point `cased worker`, `publish` and `labels` (and boto3) at the local servers.

    No CASED_ALLOW_PRIVATE_HOSTS: it governs http(s):// image sources only; the worker reaches S3 through
    boto3 at AWS_ENDPOINT_URL, loopback included.

    Examples:
        >>> exports("kafka://127.0.0.1:9092", "http://127.0.0.1:5000", "frames")[0]
        'export CASED_BROKER=kafka://127.0.0.1:9092'
    """
    return [f"export CASED_BROKER={broker_url}",
            f"export AWS_ENDPOINT_URL={s3_url}",
            f"export AWS_ACCESS_KEY_ID={ACCESS_KEY}",
            f"export AWS_SECRET_ACCESS_KEY={ACCESS_KEY}",
            f"export AWS_DEFAULT_REGION={REGION}",
            f"export CASED_S3_BUCKETS={bucket}"]


def _terminated(signum, frame) -> None:
    # SIGTERM (a `kill`, a closing terminal) unwinds like Ctrl-C, so the broker process is stopped too.
    raise SystemExit(128 + signum)


def run_local(settings: Settings, broker_port: int = 0, s3_port: int = 0, bucket: str = "frames") -> int:
    """Run the broker and the S3 endpoint until Ctrl-C or until the broker dies.

    Args:
        settings: names the topics to create and their partition count.
        broker_port, s3_port: loopback ports; 0 picks free ones.
        bucket: the bucket to create (and to allow in CASED_S3_BUCKETS).

    Returns:
        The exit status: 130 after Ctrl-C, 1 when the broker exited by itself.

    Raises:
        ValueError: a port is taken.
        RuntimeError: the embedded broker is not installed or did not start.
    """
    check_port(broker_port, "--broker-port")
    check_port(s3_port, "--s3-port")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Python leaves SIGINT ignored when it started ignored (a background job of a script): Ctrl-C and
    # `kill -INT` must stop this command wherever it was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    broker = EmbeddedBroker(port=broker_port)
    s3 = None
    try:
        broker.start()
        topics = [settings.images_topic, settings.labels_topic, settings.dead_letter_topic]
        # Created now, not by the first worker: `cased labels --follow` started first would find no
        # partitions to read.
        ensure_topics(broker.url, topics, settings.partitions)
        s3, s3_url = start_s3(s3_port, bucket)
        print("\n".join(exports(broker.url, s3_url, bucket)), flush=True)
        print(f"broker on {broker.address} (topics {', '.join(topics)}; log {broker.log_path}), S3 on {s3_url} "
              f"(bucket {bucket}), both in memory.\nRun the export lines (stdout) in each terminal for `cased worker`, "
              "`cased publish` and `cased labels`; Ctrl-C here stops both.", file=sys.stderr, flush=True)
        status = broker.process.wait()
        print(f"cased local: the broker exited with {status}; see {broker.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        # A second Ctrl-C while stopping would leave the broker process behind with a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if s3 is not None:
                s3.stop()
            broker.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
