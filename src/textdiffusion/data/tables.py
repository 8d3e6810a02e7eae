"""Column stores as text sources: parquet files, Arrow IPC files (file or stream format, as
``datasets`` caches them) and directories written by ``datasets``' ``save_to_disk``.

Every reader streams record batches of the one text column it is asked for, so a corpus larger
than memory is read in constant memory. pyarrow and ``datasets`` are imported only here, and
only when such a source is read (the ``hf`` extra installs them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError

BATCH_ROWS = 1024
# a DatasetDict's split names -> ours (anything else is left out, and said so)
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}
TABLE_SUFFIXES = (".parquet", ".arrow")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401  (the submodule, for pa.parquet)
    except ImportError:
        raise DataError("reading parquet and arrow files needs pyarrow: pip install 'textdiffusion[hf]'") from None
    return pa


def is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _column(schema, field: str, where: str) -> None:
    pa = _pyarrow()
    if field not in schema.names:
        raise DataError(f"{where} has no column {field!r} (its columns: {', '.join(schema.names)}): "
                        f"pass --text-field NAME (data.text_field)")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"column {field!r} of {where} holds {kind}, not text: pass --text-field NAME "
                        f"(data.text_field) for the column with the text")


def _texts(batches, field: str, where: str) -> Iterator[tuple[int, str]]:
    """(row number, text) of every non-null row; null rows hold no text and are skipped."""
    row = 0
    for batch in batches:
        if row == 0:
            _column(batch.schema, field, where)
        for text in batch.column(field).to_pylist():
            if text is not None:
                yield row, text
            row += 1


def table_rows(path: Path, field: str) -> Iterator[tuple[int, str]]:
    """(row, text) of a parquet or Arrow file, a batch at a time."""
    pa = _pyarrow()
    try:
        if path.suffix == ".parquet":
            pq = pa.parquet.ParquetFile(path)
            _column(pq.schema_arrow, field, str(path))
            yield from _texts(pq.iter_batches(batch_size=BATCH_ROWS, columns=[field]), field, str(path))
            return
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:  # not the file format: the stream format (datasets' cache files)
            source.seek(0)
            reader = pa.ipc.open_stream(source)
            batches = iter(reader)
        _column(reader.schema, field, str(path))
        yield from _texts(batches, field, str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        kind = "parquet" if path.suffix == ".parquet" else "Arrow IPC"
        raise DataError(f"{path} is not a readable {kind} file ({exc})") from None


def _load_from_disk(path: Path):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path} is a saved `datasets` directory: reading it needs the datasets package "
                        f"(pip install 'textdiffusion[hf]')") from None
    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{path} is not a readable saved dataset ({exc})") from None


def dataset_rows(path: Path, field: str) -> Iterator[tuple[str | None, str, str]]:
    """(our split or None, row name, text) of every row of a saved dataset. A DatasetDict's
    train/validation/test splits are kept; with no validation split, its train split (and a
    plain Dataset) is split by hash like any other corpus (None); other splits are left out."""
    loaded = _load_from_disk(path)  # first: without the datasets package, the one-line error it gives
    import datasets

    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
    named = {name: SPLIT_NAMES[name] for name, _ in parts if name in SPLIT_NAMES}
    if not named:
        raise DataError(f"{path} holds the splits {', '.join(n for n, _ in parts)}: none is train, "
                        f"validation or test")
    has_val = isinstance(loaded, datasets.DatasetDict) and "val" in named.values()
    for name, ds in parts:
        if name not in named:
            continue
        split = None if named[name] == "train" and not has_val else named[name]
        _column(ds.data.schema, field, f"{path} ({name})")
        row = 0
        for batch in ds.select_columns([field]).with_format("arrow").iter(batch_size=BATCH_ROWS):
            for text in batch.column(field).to_pylist():
                if text is not None:
                    yield split, f"{name}:{row}", text
                row += 1
