"""workers.databases: opening a database by location (tiny, a folder, s3:// through a real S3 endpoint)."""
import pytest

from cased_core.artifacts.database import DatabaseError
from workers.databases import load_database


def test_missing_and_foreign_folders_get_clear_errors(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        load_database(tmp_path / "nope")
    with pytest.raises(DatabaseError, match="no manifest.json"):
        load_database(tmp_path)


def test_s3_database_is_downloaded_once_and_verified(tmp_path, s3_server, small_database):
    s3_server.create_bucket(Bucket="models")
    for path in small_database.path.iterdir():
        s3_server.upload_file(str(path), "models", f"dbs/small/{path.name}")
    cache = tmp_path / "cache"
    loaded = load_database("s3://models/dbs/small", small_database.model, cache, s3_client=s3_server)
    assert loaded.count == small_database.count and loaded.caption(0) == small_database.caption(0)
    index_file = loaded.path / "index.faiss"
    mtime = index_file.stat().st_mtime_ns
    load_database("s3://models/dbs/small", small_database.model, cache, s3_client=s3_server)
    assert index_file.stat().st_mtime_ns == mtime  # verified in the cache, not fetched again
    # a corrupt upload is refused
    s3_server.put_object(Bucket="models", Key="dbs/small/terms.txt", Body=b"tampered\n")
    with pytest.raises(DatabaseError, match="checksum"):
        load_database("s3://models/dbs/small", small_database.model, tmp_path / "cache2", s3_client=s3_server)
    with pytest.raises(DatabaseError, match="manifest.json does not exist"):
        load_database("s3://models/nothing/here", None, tmp_path / "cache3", s3_client=s3_server)


class CountingClient:
    """A boto3 S3 client that counts the files it downloads (thread-safe: list appends)."""

    def __init__(self, client):
        self.client, self.downloads = client, []

    def download_file(self, bucket, key, filename):
        self.downloads.append(key)
        return self.client.download_file(bucket, key, filename)

    def __getattr__(self, name):
        return getattr(self.client, name)


def _upload(s3_server, database, prefix="dbs/small"):
    s3_server.create_bucket(Bucket="models")
    for path in database.path.iterdir():
        s3_server.upload_file(str(path), "models", f"{prefix}/{path.name}")


def test_a_cached_database_opens_without_reading_its_files_again(tmp_path, s3_server, small_database, monkeypatch):
    import workers.databases as databases

    _upload(s3_server, small_database)
    cache = tmp_path / "cache"
    load_database("s3://models/dbs/small", small_database.model, cache, s3_client=s3_server)
    hashed = []
    real = databases.sha256_file
    monkeypatch.setattr(databases, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    client = CountingClient(s3_server)
    loaded = load_database("s3://models/dbs/small", small_database.model, cache, s3_client=client)
    # a worker on a node that has the database: no download, and no checksum over its (20 GB) files
    assert hashed == [] and client.downloads == [] and loaded.count == small_database.count
    # a file changed since it was verified is checked again, and fetched again when it does not match
    (loaded.path / "terms.txt").write_text("changed\n")
    loaded = load_database("s3://models/dbs/small", small_database.model, cache, s3_client=client)
    assert hashed == ["terms.txt", "terms.txt.part"] and client.downloads == ["dbs/small/terms.txt"]
    assert loaded.terms == small_database.terms


def test_workers_sharing_a_cache_folder_download_each_file_once(tmp_path, s3_server, small_database):
    import threading

    _upload(s3_server, small_database)
    client, cache, errors = CountingClient(s3_server), tmp_path / "node-cache", []

    def worker():
        try:
            assert load_database("s3://models/dbs/small", small_database.model, cache, s3_client=client).count
        except BaseException as err:  # reported below: a thread's failure would otherwise go unseen
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert sorted(client.downloads) == sorted(f"dbs/small/{name}" for name in small_database.manifest["files"])
