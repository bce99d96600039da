"""Opening a database where it lives: the shipped tiny one, a local folder, or s3:// (downloaded once
into a cache, every file verified against the manifest's checksum)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cased_core.artifacts.database import TINY_DATABASE_DIR, Database, DatabaseError
from cased_core.artifacts.digest import sha256_file



def default_cache_dir() -> Path:
    """Where s3:// databases and vocabulary embeddings are cached when CASED_CACHE_DIR (the setting
    cache_dir) does not say."""
    return Path.home() / ".cache" / "cased-stream"

def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _download_s3(uri: str, cache_dir: Path, s3_client=None) -> Path:
    """Fetch a database folder from s3://bucket/prefix once; files already cached with the manifest's
    checksum are not fetched again, and every file is verified."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise DatabaseError(f"{uri}: expected s3://BUCKET/PREFIX pointing at a database folder")
    client = s3_client or boto3.client("s3")
    local = cache_dir / "databases" / bucket / prefix
    local.mkdir(parents=True, exist_ok=True)
    try:
        manifest_bytes = client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read()
    except client.exceptions.NoSuchKey as err:
        raise DatabaseError(f"{uri}/manifest.json does not exist: is the prefix a database folder?") from err
    manifest = json.loads(manifest_bytes)
    for name, checksum in manifest["files"].items():
        target = local / name
        if target.is_file() and sha256_file(target) == checksum:
            continue
        _say(f"downloading {uri}/{name}")
        partial = target.with_suffix(target.suffix + ".part")
        client.download_file(bucket, f"{prefix}/{name}", str(partial))
        if sha256_file(partial) != checksum:
            partial.unlink()
            raise DatabaseError(f"{uri}/{name} does not match its manifest checksum; the upload is corrupt or "
                                f"incomplete, upload the database folder again")
        partial.replace(target)
    (local / "manifest.json").write_bytes(manifest_bytes)
    return local


def load_database(location: str | Path = "tiny", model_identity: str | None = None,
                  cache_dir: str | Path | None = None, s3_client=None) -> Database:
    """Open a database: 'tiny' (shipped), a local folder, or an s3:// URI (cached locally, verified).
    With `model_identity`, a database built with another model is refused."""
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
