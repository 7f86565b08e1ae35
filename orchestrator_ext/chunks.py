"""Sub-batch chunks: a batch persists finished chunks so a retried attempt resumes.

With ``chunks.every_items`` and/or ``chunks.every_seconds`` set, ``process`` works through
a batch chunk by chunk. After each chunk its output rows and dead letters are written
(atomically) in the run's folder, locally or in S3 (``location``), so an attempt on another
node finds them::

    {run}/chunks/batch-NNNNN/chunk-NNNNN.parquet       the chunk's output rows
    {run}/chunks/batch-NNNNN/chunk-NNNNN.dead.parquet  the chunk's dead letters
    {run}/chunks/batch-NNNNN/index.json                 item range + sha256 per chunk

and the attempt's progress goes to the state store (``record_progress``). A later attempt
resumes after the last chunk that is intact: the index must belong to the same batch input
and job config (its ``key``), the chunks must cover the items from the start without a gap,
and each file must still have the sha256 the index recorded; the first chunk that fails
these checks and every chunk after it are discarded and redone.

The batch's result is the concatenation of the chunks' outputs in item order, read back
from the same Parquet bytes whether a chunk was made by this attempt or resumed, so a
resumed batch is byte-identical to one that ran through. The folder is removed once the
batch has committed.

Chunk boundaries: item mode closes a chunk after ``every_items`` items or ``every_seconds``
seconds, whichever comes first. Batch mode calls the job on slices of ``every_items`` items
(``DEFAULT_BATCH_SLICE`` when only ``every_seconds`` is set) and persists after every slice,
or, with only ``every_seconds``, once that much time has passed. A batch-mode job therefore
sees slices instead of the whole batch when chunks are on.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from orchestrator_ext.errors import CorruptFile, MissingOutput
from orchestrator_ext.location import Location, join, location_of

if TYPE_CHECKING:
    from orchestrator_ext.config import ChunksSpec, RunConfig
    from orchestrator_ext.state import Attempt, StateStore

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
CHUNK_DIGITS = 5
#: Items per job call in batch mode when only ``every_seconds`` is configured.
DEFAULT_BATCH_SLICE = 1000


def enabled(spec: ChunksSpec) -> bool:
    """True when sub-batch chunks are configured."""
    return spec.every_items is not None or spec.every_seconds is not None


def batch_slice_size(spec: ChunksSpec) -> int:
    """Items per job call in batch mode with chunks on."""
    return spec.every_items or DEFAULT_BATCH_SLICE


def chunks_key(config: RunConfig, batch_sha256: str) -> str:
    """What chunks depend on: the batch's items, the job, the id column, the chunking and
    the injected faults. Chunks recorded under another key are never resumed."""
    basis = {
        "batch_sha256": batch_sha256,
        "job": config.raw.get("job"),
        "id_column": config.input.id_column,
        "chunks": config.raw.get("chunks"),
        "faults": config.raw.get("faults"),
    }
    text = json.dumps(basis, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=True)
    return buffer.getvalue()


@dataclass
class Chunk:
    """One persisted chunk: items ``start .. end-1`` of the batch."""

    index: int
    start: int
    end: int
    sha256: str
    dead_sha256: str
    rows: int
    dead: int
    attempt: int
    result_bytes: bytes = field(default=b"", repr=False)
    dead_bytes: bytes = field(default=b"", repr=False)

    def entry(self) -> dict[str, Any]:
        """The chunk's line in ``index.json``."""
        data = asdict(self)
        del data["result_bytes"], data["dead_bytes"]
        return data


class ChunkStore:
    """The persisted chunks of one batch.

    Args:
        folder: ``chunks/batch-NNNNN`` of the run (``RunLayout.chunks``), a local path or
            an ``s3://`` URI.
        key: ``chunks_key`` of this batch and config.
        batch: the batch id, recorded in the index.
        files: the folder's location (default: ``location_of(folder)``).
    """

    def __init__(
        self, folder: str | os.PathLike[str], key: str, batch: str, files: Location | None = None
    ) -> None:
        self.folder = str(folder)
        self.key = key
        self.batch = batch
        self.files = files or location_of(self.folder)
        self.chunks: list[Chunk] = []
        # Whether the folder may hold anything: an index is written (or the folder removed)
        # only then, so a batch that never persisted a chunk costs no request in S3.
        self._touched = False

    @property
    def index_file(self) -> str:
        """The folder's ``index.json``: which chunks count, with their sha256."""
        return join(self.folder, "index.json")

    def result_path(self, index: int) -> str:
        """Where chunk ``index``'s output rows are kept."""
        return join(self.folder, f"chunk-{index:0{CHUNK_DIGITS}d}.parquet")

    def dead_path(self, index: int) -> str:
        """Where chunk ``index``'s dead letters are kept."""
        return join(self.folder, f"chunk-{index:0{CHUNK_DIGITS}d}.dead.parquet")

    @property
    def items_done(self) -> int:
        """Items covered by the chunks held (the position to resume from)."""
        return self.chunks[-1].end if self.chunks else 0

    def items_by_attempt(self) -> dict[str, int]:
        """How many items each attempt contributed to the chunks held."""
        counts: dict[str, int] = {}
        for chunk in self.chunks:
            counts[str(chunk.attempt)] = counts.get(str(chunk.attempt), 0) + chunk.end - chunk.start
        return counts

    # -- resume --------------------------------------------------------------------------

    def resume(self) -> list[Chunk]:
        """Load the intact prefix of the persisted chunks; discard the rest.

        Returns:
            The chunks that will be reused, in item order (also kept in ``self.chunks``).
        """
        self.chunks = []
        try:
            index = self.files.read_json(self.index_file)
        except MissingOutput:
            if self.files.occupied(self.folder):
                self.clear()  # chunk files without an index: nothing can be trusted
            return []
        except (OSError, CorruptFile) as exc:
            logger.warning("chunk index %s unreadable (%s): starting over", self.index_file, exc)
            self.clear()
            return []
        if index.get("key") != self.key or index.get("version") != INDEX_VERSION:
            logger.info(
                "chunks in %s belong to another input or config: starting over", self.folder
            )
            self.clear()
            return []
        self._touched = True
        for entry in index.get("chunks", []):
            chunk = self._load(entry)
            if chunk is None:
                break
            self.chunks.append(chunk)
        self._discard_after(len(self.chunks))
        self._write_index()
        return list(self.chunks)

    def _load(self, entry: dict[str, Any]) -> Chunk | None:
        """The chunk of an index entry if its files are intact and it continues the prefix."""
        try:
            chunk = Chunk(**entry)
        except TypeError:
            return None
        if (
            chunk.index != len(self.chunks)
            or chunk.start != self.items_done
            or chunk.end <= chunk.start
        ):
            logger.warning("chunk %s does not continue the prefix: redoing it", entry)
            return None
        try:
            chunk.result_bytes = self.files.read_bytes(self.result_path(chunk.index))
            chunk.dead_bytes = self.files.read_bytes(self.dead_path(chunk.index))
        except MissingOutput:
            logger.warning("chunk %d of batch %s is missing: redoing it", chunk.index, self.batch)
            return None
        if (
            hashlib.sha256(chunk.result_bytes).hexdigest() != chunk.sha256
            or hashlib.sha256(chunk.dead_bytes).hexdigest() != chunk.dead_sha256
        ):
            logger.warning(
                "chunk %d of batch %s does not match its recorded sha256: redoing it",
                chunk.index, self.batch,
            )  # fmt: skip
            return None
        return chunk

    def _discard_after(self, keep: int) -> None:
        for uri in self.files.list(self.folder, ".parquet"):
            number = uri.rsplit("/", 1)[-1].removeprefix("chunk-").split(".", 1)[0]
            if number.isdigit() and int(number) >= keep:
                self.files.remove(uri)

    # -- persist -------------------------------------------------------------------------

    def save(
        self, start: int, end: int, result: pl.DataFrame, dead: pl.DataFrame, attempt: int
    ) -> Chunk:
        """Persist items ``start .. end-1`` (output rows and dead letters), then the index.

        The data files are renamed into place before the index names them, so the index
        never points at a partial file.

        Raises:
            ValueError: ``start`` is not where the chunks held end.
        """
        if start != self.items_done:
            raise ValueError(f"chunk starts at item {start}, expected {self.items_done}")
        result_bytes, dead_bytes = _parquet_bytes(result), _parquet_bytes(dead)
        chunk = Chunk(
            index=len(self.chunks),
            start=start,
            end=end,
            sha256=hashlib.sha256(result_bytes).hexdigest(),
            dead_sha256=hashlib.sha256(dead_bytes).hexdigest(),
            rows=result.height,
            dead=dead.height,
            attempt=attempt,
            result_bytes=result_bytes,
            dead_bytes=dead_bytes,
        )
        self._touched = True
        self.files.write_bytes(self.result_path(chunk.index), result_bytes)
        self.files.write_bytes(self.dead_path(chunk.index), dead_bytes)
        self.chunks.append(chunk)
        self._write_index()
        return chunk

    def _write_index(self) -> None:
        if not self._touched:
            return
        self.files.write_json(
            self.index_file,
            {
                "version": INDEX_VERSION,
                "batch_id": self.batch,
                "key": self.key,
                "chunks": [c.entry() for c in self.chunks],
            },
        )

    # -- assemble ------------------------------------------------------------------------

    def results(self) -> list[pl.DataFrame]:
        """The output rows of the chunks held, in item order, read from their Parquet bytes
        (to be concatenated without casting: the chunks' types may differ)."""
        return [pl.read_parquet(io.BytesIO(c.result_bytes)) for c in self.chunks]

    def dead_letters(self) -> list[dict[str, Any]]:
        """The dead letters of the chunks held, in item order, read from their Parquet bytes."""
        return [
            row
            for chunk in self.chunks
            if chunk.dead
            for row in pl.read_parquet(io.BytesIO(chunk.dead_bytes)).to_dicts()
        ]

    def clear(self) -> None:
        """Remove the batch's chunk folder (after the batch committed)."""
        if self._touched or self.files.occupied(self.folder):
            self.files.remove(self.folder)
        self.chunks = []
        self._touched = False


def note_resume(store: StateStore, attempt: Attempt, chunks: ChunkStore, n_items: int) -> None:
    """Record in the state store that ``attempt`` resumed from persisted chunks.

    Sets the attempt's ``items_done`` and appends a RUNNING -> RUNNING transition whose
    detail says where it resumed and how many items each earlier attempt contributed, in
    one conditional write (an attempt that lost the task raises ``StateConflict``).
    """
    done = chunks.items_done
    by_attempt = ", ".join(f"attempt {a}: {n}" for a, n in chunks.items_by_attempt().items())
    detail = (
        f"resumed at item {done} of {n_items} from {len(chunks.chunks)} persisted "
        f"chunk(s) ({by_attempt})"
    )
    store.record_progress(attempt, done, detail=detail)
    logger.info("batch %s: %s", chunks.batch, detail)
