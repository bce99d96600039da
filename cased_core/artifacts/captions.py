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


def caption_rows(path: str | Path, column: str = "caption") -> int:
    """How many rows `read_captions` reads from `path` at most (a progress bar's total): Parquet's row
    count from its footer, otherwise its lines (less a CSV/TSV header), counted without parsing."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows if path.is_file() else 0
    if not path.is_file():
        return 0
    import gzip

    with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    return max(0, lines - 1) if suffix.startswith((".csv", ".tsv")) else lines


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


def clip_retrieval_captions(metadata_dir: str | Path, column: str = "caption",
                            chunk_rows: int = 65_536) -> Iterator[list[str]]:
    """The captions of a clip-retrieval database's ``metadata`` folder, in index order, `chunk_rows`
    at a time, read the way clip-retrieval's back end reads them: Arrow files (its ``--use_arrow``
    layout, written by its ``parquet_to_arrow``; every file under the folder, sorted by path) when
    there are any, else the Parquet files its inference writes (``*.parquet``, sorted by name).
    Arrow files are memory-mapped and Parquet files read in batches, so memory stays bounded.
    Missing captions become empty strings: rows must stay aligned with the index.

    Raises:
        DatabaseError: no metadata files, or a file without `column`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(metadata_dir)
    arrows = sorted(p for p in folder.glob("**/*") if p.is_file() and p.suffix != ".parquet") \
        if folder.is_dir() else []
    parquets = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not arrows and not parquets:
        raise DatabaseError(f"{folder} holds no metadata: expected clip-retrieval's metadata/*.parquet or "
                            f"the Arrow files of its --use_arrow layout")

    def checked(names: list[str], path: Path) -> None:
        if column not in names:
            raise DatabaseError(f"{path} has no column {column!r} (columns: {names}); pass --caption-column")

    def strings(values: list) -> list[str]:
        return [normalise_caption(v) if isinstance(v, str) else "" for v in values]

    for path in arrows or parquets:
        if arrows:
            try:
                table = pa.ipc.RecordBatchFileReader(pa.memory_map(str(path), "r")).read_all()
            except pa.ArrowInvalid as err:
                raise DatabaseError(f"{path} is not an Arrow IPC file ({err}); the metadata folder of a "
                                    f"clip-retrieval database holds only its Arrow files") from err
            checked(table.column_names, path)
            captions = table.column(column)
            for start in range(0, len(captions), chunk_rows):
                yield strings(captions.slice(start, chunk_rows).to_pylist())
        else:
            parquet = pq.ParquetFile(path)
            checked(parquet.schema_arrow.names, path)
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=[column]):
                yield strings(batch.column(0).to_pylist())
