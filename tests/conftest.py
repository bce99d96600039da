"""Shared fixtures: real processes on loopback with free ports, always stopped; small real models and databases."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cased_core.tinyworld import world as tinyworld
from cased_core.artifacts.database_build import build_database
from cased_core.method.lexicon import load_lexicon
from cased_core.artifacts.model import load_model
from workers.databases import load_database
from cased_core.tinyworld.train import TINY_MODEL_CFG, TINY_PREPROCESS_CFG
from workers.cli.broker import free_port


@pytest.fixture(autouse=True)
def restore_logging():
    """`cased` commands run in process (main(...)) set the process's logging up (workers/logs.py): put it
    back after each test, so that one test's levels never hide another's records."""
    import logging

    root, named = logging.getLogger(), [logging.getLogger(name) for name in ("cased", "kafka")]
    saved = root.handlers[:], root.level, [logger.level for logger in named]
    yield
    root.handlers, root.level = saved[0], saved[1]
    for logger, level in zip(named, saved[2]):
        logger.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture(scope="session")
def lexicon():
    return load_lexicon()


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    """The tiny architecture with no weights: open_clip initialises it randomly (seeded by load_model)."""
    folder = tmp_path_factory.mktemp("random-tiny")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_MODEL_CFG,
                                                              "preprocess_cfg": TINY_PREPROCESS_CFG}))
    return folder


@pytest.fixture(scope="session")
def random_model(random_model_dir):
    return load_model(str(random_model_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_model():
    """The trained tiny model shipped as package data."""
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_database(tiny_model):
    return load_database("tiny", tiny_model.identity)


@pytest.fixture(scope="session")
def caption_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    rng = np.random.default_rng(3)
    path.write_text("".join(c + "\n" for c in tinyworld.captions(rng, 600)))
    return path


@pytest.fixture(scope="session")
def small_database(tmp_path_factory, caption_file, random_model, lexicon):
    """A real database (exact faiss index) built with the random-init tiny model."""
    out = tmp_path_factory.mktemp("db") / "small"
    return load_database(build_database([caption_file], out, random_model, lexicon))


@pytest.fixture
def s3_server(s3_endpoint):
    """A boto3 client bound to the moto S3 server."""
    return s3_endpoint[1]


@pytest.fixture
def broker():
    """A real Kafka-protocol broker (Tansu) on a free loopback port."""
    from workers.cli.broker import EmbeddedBroker

    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def s3_endpoint():
    """A moto S3 server over real HTTP; yields (endpoint_url, boto3 client)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                                aws_secret_access_key="test")
    finally:
        server.stop()
