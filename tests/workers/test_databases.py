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
