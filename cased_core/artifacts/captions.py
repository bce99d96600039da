"""Caption files: plain text (one a line), CSV/TSV, JSONL or Parquet, optionally gzipped, streamed."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Iterable, Iterator

from cased_core.errors import DatabaseError


def normalise_caption(text: str) -> str:
    return " ".join(text.split())


def read_captions(path: str | Path, column: str = "caption", chunk_rows: int = 65_536) -> Iterator[str]:
    """Stream captions from plain text (one per line), CSV, JSONL or Parquet with a caption column."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if not path.is_file():
        raise DatabaseError(f"caption file {path} does not exist")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if column not in parquet.schema_arrow.names:
            raise DatabaseError(f"{path} has no column {column!r} (columns: {parquet.schema_arrow.names}); "
                                f"pass --caption-column")
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=[column]):
            yield from (c for c in batch.column(0).to_pylist() if c)
        return
    opener = (lambda: io.TextIOWrapper(__import__("gzip").open(path), encoding="utf-8")) \
        if path.suffix == ".gz" else (lambda: open(path, encoding="utf-8", newline=""))
    with opener() as f:
        if suffix.startswith(".csv") or suffix.startswith(".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if suffix.startswith(".tsv") else ",")
            if column not in (reader.fieldnames or []):
                raise DatabaseError(f"{path} has no column {column!r} (columns: {reader.fieldnames}); "
                                    f"pass --caption-column")
            yield from (row[column] for row in reader if row.get(column))
        elif suffix.startswith(".jsonl"):
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        value = json.loads(line).get(column)
                    except (json.JSONDecodeError, AttributeError) as err:
                        raise DatabaseError(f"{path}:{number}: not a JSON object ({err})") from err
                    if value:
                        yield str(value)
        else:
            yield from (line.rstrip("\n") for line in f)


def unique_captions(captions: Iterable[str]) -> Iterator[str]:
    """Normalised, non-empty, exact duplicates dropped (8-byte digests keep memory at ~80 B a caption)."""
    seen: set[bytes] = set()
    for caption in captions:
        text = normalise_caption(caption)
        if not text:
            continue
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        if digest not in seen:
            seen.add(digest)
            yield text


def chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
