"""Opening a database where it lives: the shipped tiny one, a local folder, or s3:// (downloaded once
into a cache, every file verified against the manifest's checksum); the memory an exact search may
take on the worker's device.

Several workers may share one cache folder (one copy of a database per node, see docs/databases.md):
the first to arrive downloads while the others wait on a lock, and a verified file is recorded with
its size and modification time, so a worker starting on a node that has the database already opens
it without reading 20 GB to checksum it again.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from cased_core.artifacts.database import TINY_DATABASE_DIR, Database, DatabaseError
from cased_core.artifacts.digest import sha256_file
from cased_core.artifacts.search import exact_budget_mb

VERIFIED = ".verified.json"  # name -> [size, mtime_ns, sha256] of each file verified in a cache folder



def default_cache_dir() -> Path:
    """Where s3:// databases and vocabulary embeddings are cached when CASED_CACHE_DIR (the setting
    cache_dir) does not say."""
    return Path.home() / ".cache" / "cased-stream"

def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def device_memory(device) -> tuple[int, int] | None:
    """(free, total) bytes of a CUDA device; None for any other device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)


def search_budget_mb(cap_mb: float, device) -> float:
    """What an exact search may hold on `device` (CASED_SEARCH_MEMORY_MB: 0 follows its free memory,
    more caps it): see cased_core.artifacts.search.exact_budget_mb."""
    memory = device_memory(device)
    return exact_budget_mb(*(memory or (None, None)), cap_mb=cap_mb)


@contextmanager
def _locked(folder: Path):
    """Exclusive use of a cache folder among the processes on this machine (and pods sharing a node's
    folder): the first downloads, the others wait and then find the files verified."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _download_s3(uri: str, cache_dir: Path, s3_client=None) -> Path:
    """Fetch a database folder from s3://bucket/prefix once; files already cached and verified (or
    matching the manifest's checksum) are not fetched again, and every fetched file is verified."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise DatabaseError(f"{uri}: expected s3://BUCKET/PREFIX pointing at a database folder")
    client = s3_client or boto3.client("s3")
    local = cache_dir / "databases" / bucket / prefix
    try:
        manifest_bytes = client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read()
    except client.exceptions.NoSuchKey as err:
        raise DatabaseError(f"{uri}/manifest.json does not exist: is the prefix a database folder?") from err
    manifest = json.loads(manifest_bytes)
    with _locked(local):
        verified_path = local / VERIFIED
        verified = json.loads(verified_path.read_text()) if verified_path.is_file() else {}
        started, fetched = time.monotonic(), 0
        for name, checksum in manifest["files"].items():
            target = local / name
            if target.is_file() and verified.get(name) == [*_stamp(target), checksum]:
                continue  # verified before and untouched since: no need to read it again
            if not (target.is_file() and sha256_file(target) == checksum):
                _say(f"downloading {uri}/{name}")
                partial = target.with_suffix(target.suffix + ".part")
                client.download_file(bucket, f"{prefix}/{name}", str(partial))
                if sha256_file(partial) != checksum:
                    partial.unlink()
                    raise DatabaseError(f"{uri}/{name} does not match its manifest checksum; the upload is corrupt "
                                        f"or incomplete, upload the database folder again")
                partial.replace(target)
                fetched += target.stat().st_size
            verified[name] = [*_stamp(target), checksum]
            _write_atomic(verified_path, json.dumps(verified).encode())
        _write_atomic(local / "manifest.json", manifest_bytes)
        if fetched:
            seconds = time.monotonic() - started
            _say(f"downloaded and verified {fetched / 2**20:,.0f} MiB from {uri} in {seconds:.1f} s "
                 f"({fetched / 2**20 / max(seconds, 1e-9):,.0f} MiB/s)")
    return local


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader never sees it half-written."""
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, path)


def load_database(location: str | Path = "tiny", model_identity: str | None = None,
                  cache_dir: str | Path | None = None, s3_client=None) -> Database:
    """Open a database: 'tiny' (shipped), a local folder, or an s3:// URI (cached locally, verified).
    With `model_identity`, a database built with another model is refused.

    Raises:
        DatabaseError: no such folder, not a database, a download that does not match its checksums.
        ModelMismatchError: built with another model than `model_identity`.
    """
    location = str(location)
    if location == "tiny":
        path = TINY_DATABASE_DIR
    elif location.startswith("s3://"):
        path = _download_s3(location, Path(cache_dir) if cache_dir else default_cache_dir(), s3_client)
    else:
        path = Path(location)
        if not path.is_dir():
            raise DatabaseError(f"database folder {path} does not exist; pass 'tiny', a folder written by "
                                f"`cased db build`, or an s3:// URI")
    database = Database(path)
    if model_identity is not None:
        database.check_model(model_identity)
    return database
