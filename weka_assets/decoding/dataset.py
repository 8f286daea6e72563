"""A decoded dataset: compact storage and the public expansion API.

Never one token list per call. Stored are the filler corpus, each distinct (scope, id) block
once (its sub-block offsets into the filler), every call as a list of block rows plus a spec
of its partial block and unhashed tail. `expand_call` turns any call into exactly `in` token
ids with one vectorised gather.

On disk, `<root>/<decode key>/` holds `.npy` arrays (memory-mapped on read), `calls.parquet`,
`traces.parquet` and `manifest.json`, written last with the sha256 of every file: a folder
without a manifest is never read. A dataset is written aside and renamed into place, so a
half-written one is never visible and an existing one is never overwritten.
"""

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from weka_assets.errors import DecodeError

CALL_COLUMNS = {
    # name: dtype. Calls are stored grouped by trace, in replay order within each trace.
    "trace": np.int32,
    "conv": np.int32,
    "request": np.int32,
    "inner": np.int32,
    "role": np.int8,  # 0 parent, 1 subagent
    "t_abs": np.float64,
    "tokens_in": np.int64,
    "tokens_out": np.int64,
    "block_size": np.int32,
    "rows_start": np.int64,
    "n_ids": np.int64,
    "n_full": np.int64,
    "partial_len": np.int32,
    "tail_len": np.int64,
    "tail_offset": np.int64,
}
ARRAYS = ("filler", "block_trace", "block_id", "block_offsets", "call_rows")
ROLES = ("parent", "subagent")


@dataclass
class DecodedDataset:
    """In-memory (or memory-mapped) decoded dataset."""

    filler: np.ndarray  # int32 [N]
    block_trace: np.ndarray  # int32 [R]: trace index of each block row
    block_id: np.ndarray  # int64 [R]: the hash id it decodes
    block_offsets: np.ndarray  # uint32 [R, S]: sub-block starts in the filler
    call_rows: np.ndarray  # int64 [sum n_ids]: block rows of every call, concatenated
    calls: dict[str, np.ndarray]  # CALL_COLUMNS
    traces: list[dict]  # id, file, line, block_size, scopes
    manifest: dict = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self):
        n = self.filler.size
        s = self.block_offsets.shape[1] if self.block_offsets.ndim == 2 else 1
        self._sub_blocks = s
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        longest = max((max(self.block_sizes, default=1) + s - 1) // s, 1)
        # the filler plus a wrap-around copy of its head: a sub-block never needs a modulo
        self._filler_ext = np.concatenate([self.filler, self.filler[: min(longest, n)]])

    # ---- shape -------------------------------------------------------------------------------
    @property
    def n_calls(self) -> int:
        return int(self.calls["trace"].size)

    @property
    def block_sizes(self) -> list[int]:
        return sorted({int(t["block_size"]) for t in self.traces})

    @property
    def sub_blocks(self) -> int:
        return self._sub_blocks

    def trace_slices(self) -> list[slice]:
        """Call index ranges of each trace (calls are grouped by trace)."""
        tr = self.calls["trace"]
        bounds = np.searchsorted(tr, np.arange(len(self.traces) + 1), side="left")
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def leading_rows(self, calls: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The first counts[j] block rows of each call in `calls`, concatenated."""
        counts = np.asarray(counts, dtype=np.int64)
        starts = self.calls["rows_start"][calls].astype(np.int64)
        offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(counts) - counts, counts
        )
        return np.asarray(self.call_rows)[np.repeat(starts, counts) + offsets]

    def call_ids(self, i: int) -> np.ndarray:
        """The hash ids of call `i`, as recorded."""
        s = int(self.calls["rows_start"][i])
        return self.block_id[self.call_rows[s : s + int(self.calls["n_ids"][i])]]

    # ---- expansion ---------------------------------------------------------------------------
    def _layout(self, bs: int) -> tuple[np.ndarray, np.ndarray]:
        """For each position p of a block: which sub-block it is in, and where within it."""
        if bs not in self._layouts:
            s = min(self._sub_blocks, bs)
            lengths = np.full(s, bs // s) + (np.arange(s) < bs % s)
            sub = np.repeat(np.arange(s), lengths)
            within = np.arange(bs) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            self._layouts[bs] = (sub, within)
        return self._layouts[bs]

    def block_tokens(self, rows: np.ndarray, bs: int) -> np.ndarray:
        """Token ids of whole blocks: int32 [len(rows), bs]."""
        sub, within = self._layout(bs)
        starts = self.block_offsets[np.asarray(rows)][:, sub].astype(np.int64)
        return self._filler_ext[starts + within]

    def expand_call(self, i: int) -> np.ndarray:
        """Exactly `tokens_in` token ids of call `i` (int32)."""
        c = self.calls
        n, bs = int(c["tokens_in"][i]), int(c["block_size"][i])
        full, partial, tail = int(c["n_full"][i]), int(c["partial_len"][i]), int(c["tail_len"][i])
        s = int(c["rows_start"][i])
        rows = self.call_rows[s : s + int(c["n_ids"][i])]
        out = np.empty(n, dtype=np.int32)
        if full:
            out[: full * bs] = self.block_tokens(rows[:full], bs).ravel()
        if partial:
            out[full * bs : full * bs + partial] = self.block_tokens(rows[full : full + 1], bs)[
                0, :partial
            ]
        if tail:
            start = full * bs + partial
            idx = (int(c["tail_offset"][i]) + np.arange(tail, dtype=np.int64)) % self.filler.size
            out[start:] = self.filler[idx]
        return out

    def expand_all(self):
        """Yield (call index, token ids) for every call, one call at a time."""
        for i in range(self.n_calls):
            yield i, self.expand_call(i)

    def role_mask(self, role: str) -> np.ndarray:
        return self.calls["role"] == ROLES.index(role)

    # ---- storage -----------------------------------------------------------------------------
    def write(self, root: Path | str, key: str) -> Path:
        """Publish at `<root>/<key>/` atomically; an existing dataset there wins and is kept."""
        root = Path(root)
        final = root / key
        if is_complete(final):
            return final
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            files = {}
            for name in ARRAYS:
                p = tmp / f"{name}.npy"
                np.save(p, np.ascontiguousarray(getattr(self, name)))
                files[p.name] = _sha256(p)
            table = pa.table(
                {k: pa.array(np.asarray(v, dtype=CALL_COLUMNS[k])) for k, v in self.calls.items()}
            )
            pq.write_table(table, tmp / "calls.parquet")
            pq.write_table(pa.Table.from_pylist(self.traces), tmp / "traces.parquet")
            for p in ("calls.parquet", "traces.parquet"):
                files[p] = _sha256(tmp / p)
            manifest = dict(self.manifest, files=files)
            (tmp / "manifest.json").write_bytes(
                orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
            )
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not is_complete(final):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.path = final
        return final


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())


def is_complete(path: Path | str) -> bool:
    return (Path(path) / "manifest.json").is_file()


def read_manifest(path: Path | str) -> dict:
    p = Path(path) / "manifest.json"
    if not p.is_file():
        raise DecodeError(f"{path}: not a decoded dataset (no manifest.json)")
    return orjson.loads(p.read_bytes())


def open_dataset(path: Path | str, verify: bool = False) -> DecodedDataset:
    """Open a stored dataset (arrays memory-mapped). `verify` re-checks every file's sha256."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        for name, digest in manifest.get("files", {}).items():
            if _sha256(path / name) != digest:
                raise DecodeError(
                    f"{path / name}: checksum mismatch; the stored dataset is corrupt"
                )
    try:
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        calls_t = pq.read_table(path / "calls.parquet")
        traces = pq.read_table(path / "traces.parquet").to_pylist()
    except (OSError, ValueError) as exc:
        raise DecodeError(f"{path}: cannot read dataset ({exc})") from None
    calls = {k: calls_t.column(k).to_numpy() for k in CALL_COLUMNS}
    ds = DecodedDataset(calls=calls, traces=traces, manifest=manifest, path=path, **arrays)
    return ds
