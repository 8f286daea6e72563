"""A decoded dataset: compact storage and the public expansion API.

Never one token list per call, nor one id list: stored are the filler corpus, each distinct
(scope, id) block once (its sub-block offsets into the filler), and every call as what it adds
to its conversation: `shared` leading blocks of the conversation's previous call (`prev`, in
replay order) plus the block rows of the rest (`tail_rows`), and a spec of its partial block
and unhashed tail. `call_rows` rebuilds any call's rows; `RowWalker` rebuilds them call after
call by rewriting only what changed; `expand_call` turns any call into exactly `in` token ids
with one vectorised gather.

On disk, `<root>/<decode key>/` holds `.npy` arrays (memory-mapped on read; the calls table as
one record array `calls.npy`), `calls.parquet` (the same table, for people),
`traces.parquet` and `manifest.json`, written last with the sha256 of every file: a folder
without a manifest is never read. Its bytes depend on the content only (no local path, time or
host), so two machines decoding one key write identical folders; where and when a dataset was
written is kept beside it, in `<root>/.provenance/<decode key>.json`. `DatasetWriter` appends trace after trace (memory bounded by
one trace) into a folder aside and renames it into place, so a half-written dataset is never
visible and an existing one is never overwritten.

pyarrow is imported where the Parquet tables are written and read, not with the module: the
decoding and replay workers import this module for its arrays and never touch Parquet, and
pyarrow would make every worker process (and the fork server they start from) about 60 MB
larger.
"""

import fcntl
import hashlib
import mmap
import os
import secrets
import shutil
import socket
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from weka_assets.errors import DecodeError
from weka_assets.traces.requests import session_name

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
    "prev": np.int64,  # the conversation's previous call (global index), -1 for its first
    "shared": np.int64,  # leading block rows shared with `prev`
}
ARRAYS = ("filler", "block_trace", "block_id", "block_offsets", "tail_rows")
# On-disk layout version; part of the decode key, so a layout change never reads old folders.
# 4: content-only bytes (trace files by name, no creation time in the manifest).
DATASET_FORMAT = 4
# The calls table, also stored as one record array (`calls.npy`): memory-mapped on read, so a
# process touches only the columns and rows it uses; `calls.parquet` is the same table for people.
CALLS_DTYPE = np.dtype([(k, np.dtype(v).newbyteorder("<")) for k, v in CALL_COLUMNS.items()])
ROLES = ("parent", "subagent")
REQUESTS = "requests"  # a trace's `layout` when it is a file of requests, one call each
MANIFEST = "manifest.json"
PROVENANCE = ".provenance"  # under a dataset root: <decode key>.json, where and when written


@dataclass
class DecodedDataset:
    """In-memory (or memory-mapped) decoded dataset."""

    filler: np.ndarray  # int32 [N]
    block_trace: np.ndarray  # int32 [R]: trace index of each block row
    block_id: np.ndarray  # int64 [R]: the hash id it decodes
    block_offsets: np.ndarray  # uint32 [R, S]: sub-block starts in the filler
    tail_rows: np.ndarray  # int64: block rows of each call's ids after its shared prefix
    calls: dict[str, np.ndarray]  # CALL_COLUMNS
    traces: list[dict]  # id, file, line, block_size, scopes
    manifest: dict = field(default_factory=dict)
    path: Path | None = None
    records: np.ndarray | None = None  # the calls table as one record array, when stored

    def __post_init__(self):
        self._trace_slices: list[slice] | None = None
        self._trace_rows: np.ndarray | None = None
        n = self.filler.size
        s = self.block_offsets.shape[1] if self.block_offsets.ndim == 2 else 1
        self._sub_blocks = s
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        longest = max((max(self.block_sizes, default=1) + s - 1) // s, 1)
        # the filler plus a wrap-around copy of its head: a sub-block never needs a modulo
        self._filler_ext = np.concatenate([self.filler, self.filler[: min(longest, n)]])

    # ---- shape -------------------------------------------------------------------------------
    @property
    def decode_key(self) -> str | None:
        """The stored dataset's decode key: how results name it (a local path would differ
        from machine to machine); None for a dataset built in memory."""
        key = self.manifest.get("decode_key") if isinstance(self.manifest, dict) else None
        return key if isinstance(key, str) else None

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
        if self._trace_slices is None:
            if self.records is None:
                bounds = self._bounds([self.calls["trace"]])
            else:
                bounds = self._bounds(c["trace"] for c in row_chunks(self.records))
            self._trace_slices = [
                slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        return self._trace_slices

    def trace_rows(self) -> np.ndarray:
        """Block row bounds of each trace: trace t's rows are [b[t], b[t + 1])."""
        if self._trace_rows is None:
            self._trace_rows = self._bounds(row_chunks(self.block_trace))
        return self._trace_rows

    def _bounds(self, chunks) -> np.ndarray:
        """Where each trace starts in a trace-grouped array, counted chunk by chunk. A stored
        array is read with file reads, never through its map: a binary search over the map
        reads ahead, and left 37 MB of block_trace resident at 10 M rows (measured)."""
        counts = np.zeros(len(self.traces), dtype=np.int64)
        for values in chunks:
            counts += np.bincount(values, minlength=counts.size)[: counts.size]
        return np.concatenate([[0], np.cumsum(counts)])

    def column(self, name: str) -> np.ndarray:
        """One column of the calls table as an array of its own (read in chunks when stored,
        so the rest of the table never becomes resident)."""
        if self.records is None:
            return np.asarray(self.calls[name])
        parts = [c[name] for c in row_chunks(self.records)]
        return np.concatenate(parts) if parts else np.empty(0, CALLS_DTYPE[name])

    def calls_range(self, a: int, b: int) -> dict[str, np.ndarray]:
        """Calls [a, b) as columns of their own (a file read when stored)."""
        if self.records is None:
            return {k: np.array(v[a:b]) for k, v in self.calls.items()}
        rows = _read_rows(self.records, a, b)
        return {k: np.ascontiguousarray(rows[k]) for k in CALL_COLUMNS}

    def head(self, traces: int) -> "DecodedDataset":
        """The same dataset limited to its first `traces` traces (arrays shared, not copied)."""
        if traces >= len(self.traces):
            return self
        stop = self.trace_slices()[traces].start  # calls and block rows are grouped by trace
        rows = int(self.trace_rows()[traces])
        tails = int(self.calls["rows_start"][stop]) if stop < self.n_calls else self.tail_rows.size
        return DecodedDataset(
            filler=self.filler,
            block_trace=self.block_trace[:rows],
            block_id=self.block_id[:rows],
            block_offsets=self.block_offsets[:rows],
            tail_rows=self.tail_rows[:tails],
            calls={k: v[:stop] for k, v in self.calls.items()},
            traces=self.traces[:traces],
            manifest=self.manifest,
            path=self.path,
        )

    def head_calls(self, calls: int) -> "DecodedDataset":
        """The dataset limited to its first `calls` calls (the last trace kept may lose its
        later calls); arrays shared, not copied."""
        if calls >= self.n_calls:
            return self
        keep = int(self.calls["trace"][calls - 1]) + 1 if calls else 0
        rows = int(self.trace_rows()[keep])
        traces = [dict(t) for t in self.traces[:keep]]
        if traces:
            traces[-1]["calls"] = calls - self.trace_slices()[keep - 1].start
        return DecodedDataset(
            filler=self.filler,
            block_trace=self.block_trace[:rows],
            block_id=self.block_id[:rows],
            block_offsets=self.block_offsets[:rows],
            tail_rows=self.tail_rows[: int(self.calls["rows_start"][calls])],
            calls={k: v[:calls] for k, v in self.calls.items()},
            traces=traces,
            manifest=self.manifest,
            path=self.path,
        )

    def shard(self, first: int, last: int) -> "DecodedDataset":
        """Traces [first, last) as a small dataset of their own (arrays copied and renumbered):
        what a worker process gets, instead of opening the whole stored dataset."""
        slices = self.trace_slices()
        a, b = slices[first].start, slices[last - 1].stop
        r0, r1 = (int(x) for x in self.trace_rows()[[first, last]])
        n = self.n_calls
        calls = self.calls_range(a, min(b + 1, n))  # and the next call's rows_start
        t0 = int(calls["rows_start"][0]) if a < n else int(self.tail_rows.size)
        t1 = int(calls["rows_start"][b - a]) if b < n else int(self.tail_rows.size)
        calls = {k: v[: b - a] for k, v in calls.items()}
        calls["trace"] -= first
        calls["rows_start"] -= t0
        calls["prev"] = np.where(calls["prev"] >= 0, calls["prev"] - a, -1)
        return DecodedDataset(
            filler=np.array(self.filler),
            block_trace=_read_rows(self.block_trace, r0, r1) - first,
            block_id=_read_rows(self.block_id, r0, r1),
            block_offsets=_read_rows(self.block_offsets, r0, r1),
            tail_rows=_read_rows(self.tail_rows, t0, t1) - r0,
            calls=calls,
            traces=self.traces[first:last],
            manifest={},
        )

    def call_rows(self, i: int) -> np.ndarray:
        """The block rows of call `i`, rebuilt from the tails along its conversation."""
        c = self.calls
        parts = []
        u, j = int(c["n_ids"][i]), i
        while u > 0:
            shared, start = int(c["shared"][j]), int(c["rows_start"][j])
            lo = min(shared, u)
            if lo < u:
                parts.append(self.tail_rows[start + lo - shared : start + u - shared])
            u, j = lo, int(c["prev"][j])
        parts.reverse()
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def leading_rows(self, calls: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The first counts[j] block rows of each call in `calls`, concatenated."""
        counts = np.asarray(counts, dtype=np.int64)
        out = np.empty(int(counts.sum()), dtype=np.int64)
        walker = RowWalker(self)
        pos = 0
        for i, k in zip(np.asarray(calls).tolist(), counts.tolist(), strict=True):
            out[pos : pos + k] = walker.rows(i)[:k]
            pos += k
        return out

    def call_ids(self, i: int) -> np.ndarray:
        """The hash ids of call `i`, as recorded."""
        return self.block_id[self.call_rows(i)]

    # ---- expansion ---------------------------------------------------------------------------
    def _layout(self, bs: int) -> tuple[np.ndarray, np.ndarray]:
        """For each position p of a block: which sub-block it is in, and where within it.
        Kept for the last few block sizes only: each costs 16 bytes per token of a block."""
        if bs not in self._layouts:
            if len(self._layouts) >= LAYOUTS_KEPT:
                self._layouts.pop(next(iter(self._layouts)))
            s = min(self._sub_blocks, bs)
            lengths = np.full(s, bs // s) + (np.arange(s) < bs % s)
            sub = np.repeat(np.arange(s), lengths)
            within = np.arange(bs) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            self._layouts[bs] = (sub, within)
        return self._layouts[bs]

    def sub_block_spans(self, bs: int) -> tuple[np.ndarray, np.ndarray]:
        """(block position where each sub-block starts, its length) for blocks of `bs`."""
        s = min(self._sub_blocks, bs)
        lengths = np.full(s, bs // s) + (np.arange(s) < bs % s)
        return np.cumsum(lengths) - lengths, lengths

    def block_tokens(self, rows: np.ndarray, bs: int) -> np.ndarray:
        """Token ids of whole blocks: int32 [len(rows), bs]."""
        sub, within = self._layout(bs)
        starts = self.block_offsets[np.asarray(rows)][:, sub].astype(np.int64)
        return self._filler_ext[starts + within]

    def expand_call(self, i: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Exactly `tokens_in` token ids of call `i` (int32); `rows`: its block rows if known."""
        rows = self.call_rows(i) if rows is None else rows
        out = np.empty(int(self.calls["tokens_in"][i]), dtype=np.int32)
        self._fill(i, rows, out, 0)
        return out

    def _fill(self, i: int, rows: np.ndarray, out: np.ndarray, first_block: int) -> None:
        """Write call `i`'s tokens into `out` from block `first_block` on."""
        c = self.calls
        n, bs = int(c["tokens_in"][i]), int(c["block_size"][i])
        full, partial, tail = int(c["n_full"][i]), int(c["partial_len"][i]), int(c["tail_len"][i])
        if full > first_block:
            out[first_block * bs : full * bs] = self.block_tokens(
                rows[first_block:full], bs
            ).ravel()
        if partial:
            out[full * bs : full * bs + partial] = self.block_tokens(rows[full : full + 1], bs)[
                0, :partial
            ]
        if tail:
            # filler[(tail_offset + k) % size] for k < tail, copied a run of the filler at a
            # time: no index array, so a long tail costs its own 4 bytes a token and no more
            size = self.filler.size
            pos, o = full * bs + partial, int(c["tail_offset"][i]) % size
            while pos < n:
                k = min(size - o, n - pos)
                out[pos : pos + k] = self.filler[o : o + k]
                pos, o = pos + k, 0

    def expand_all(self, start: int = 0, stop: int | None = None):
        """Yield (call index, token ids) for calls [start, stop), one call at a time.

        Streamed: each array is a view into a buffer of its conversation, where only the
        blocks that differ from the previous call's are rewritten; it is valid until the next
        call of that conversation (copy it to keep it). A conversation's buffer is dropped
        after its last call, so what is held is the conversations still going, not every
        conversation of the trace."""
        stop = self.n_calls if stop is None else stop
        c = self.calls
        prev, shared, n_full = c["prev"], c["shared"], c["n_full"]
        walker = RowWalker(self)
        bufs: dict[int, np.ndarray] = {}
        trace = c["trace"]
        later = np.asarray(prev[start:stop], dtype=np.int64)  # a conversation's next call
        has_next = np.zeros(max(stop - start, 0), dtype=bool)
        has_next[later[later >= start] - start] = True
        for i in range(start, stop):
            if i > start and trace[i] != trace[i - 1]:
                bufs.clear()  # conversations never cross traces: drop finished buffers
                walker.clear()
            rows = walker.rows(i)
            p, n, bs = int(prev[i]), int(c["tokens_in"][i]), int(c["block_size"][i])
            buf = bufs.pop(p, None) if p >= 0 else None
            k0 = 0
            if buf is not None:
                k0 = min(int(shared[i]), int(n_full[p]), int(n_full[i]))
                if buf.size < n:
                    grown = np.empty(2 * n, dtype=np.int32)
                    grown[: k0 * bs] = buf[: k0 * bs]
                    buf = grown
            else:
                buf = np.empty(max(2 * n, 1024), dtype=np.int32)
            self._fill(i, rows, buf, k0)
            if has_next[i - start]:
                bufs[i] = buf
            else:  # its conversation's last call: nothing will extend its buffers
                walker.forget(i)
            yield i, buf[:n]

    def request_files(self) -> np.ndarray:
        """bool [traces]: which traces are files of requests (`decoder.decode_requests`):
        their calls share no stored conversation (each request's rows are all its ids)."""
        return np.array([t.get("layout") == REQUESTS for t in self.traces], dtype=bool)

    def sessions(self) -> tuple[np.ndarray, list[str]]:
        """(session index of every call, each session's id): what a router keeps on one
        replica and an arrival model places. A trace is one session (the parent and its
        subagents); a file of requests with sessions (Bailian) has its own, in `conv`, named
        `<trace id>:session-<root chat_id>`; one without (Mooncake) is one per request,
        `<trace id>#<request>`, numbered in file order."""
        trace = np.asarray(self.column("trace"), dtype=np.int64)
        files = self.request_files()
        if not files.any():
            return trace, [str(t["id"]) for t in self.traces]
        request = np.asarray(self.column("request"), dtype=np.int64)
        session = np.empty(trace.size, np.int64)
        ids: list[str] = []
        for k, (t, sl) in enumerate(zip(self.traces, self.trace_slices(), strict=True)):
            roots = t.get("session_roots")
            if files[k] and roots is not None:
                session[sl] = len(ids) + np.asarray(self.column("conv")[sl], dtype=np.int64)
                ids.extend(session_name(str(t["id"]), int(r)) for r in roots)
            elif files[k]:  # numbered in file order (the calls are in time order)
                mine = request[sl]
                order = np.argsort(mine, kind="stable")
                session[sl.start + order] = len(ids) + np.arange(order.size)
                ids.extend(f"{t['id']}#{r}" for r in mine[order].tolist())
            else:
                session[sl] = len(ids)
                ids.append(str(t["id"]))
        return session, ids

    def role_mask(self, role: str) -> np.ndarray:
        return self.column("role") == ROLES.index(role)

    # ---- storage -----------------------------------------------------------------------------
    def write(self, root: Path | str, key: str) -> Path:
        """Publish at `<root>/<key>/` atomically; an existing dataset there wins and is kept."""
        with DatasetWriter(root, self.filler, self.sub_blocks) as w:
            w.append_arrays(
                self.traces,
                self.block_trace,
                self.block_id,
                self.block_offsets,
                self.tail_rows,
                self.calls,
            )
            self.path = w.publish(key, self.manifest)
        return self.path


CHUNK_ROWS = 1 << 20
LAYOUTS_KEPT = 4  # block sizes whose layout a dataset keeps (`DecodedDataset._layout`)


def row_chunks(arr: np.ndarray, rows: int | None = None):
    """An array's rows, `rows` (default CHUNK_ROWS) at a time, as copies (file reads when
    stored)."""
    rows = rows or CHUNK_ROWS
    for a in range(0, len(arr), rows):
        yield _read_rows(arr, a, min(a + rows, len(arr)))


def _read_rows(arr: np.ndarray, a: int, b: int) -> np.ndarray:
    """Rows [a, b) of an array as a copy. A stored (memory-mapped) array is read with a plain
    file read, so the pages do not stay mapped in this process: copying shard after shard
    never makes the reader hold the whole dataset."""
    if isinstance(arr, np.memmap) and arr.filename and isinstance(arr.base, mmap.mmap):
        row = int(np.prod(arr.shape[1:], dtype=np.int64))
        with open(arr.filename, "rb") as fh:
            fh.seek(int(arr.offset) + a * row * arr.dtype.itemsize)
            out = np.fromfile(fh, dtype=arr.dtype, count=(b - a) * row)
        return out.reshape((b - a, *arr.shape[1:]))
    return np.array(arr[a:b])


class RowWalker:
    """Each call's block rows, call after call in dataset order, each built from its
    conversation predecessor's by rewriting only the rows that changed. A returned array is
    valid until the next call of the same conversation."""

    def __init__(self, ds: DecodedDataset):
        self.ds = ds
        self._last: dict[int, np.ndarray] = {}  # a conversation's last call -> its row buffer
        c = ds.calls
        self._prev, self._shared = c["prev"], c["shared"]
        self._n, self._start = c["n_ids"], c["rows_start"]

    def clear(self) -> None:
        """Forget every conversation's buffer (at a trace boundary)."""
        self._last.clear()

    def forget(self, i: int) -> None:
        """Drop call `i`'s buffer (its conversation has no later call): a walk in another order
        than the dataset's (the corpus timeline) frees finished conversations this way."""
        self._last.pop(i, None)

    def rows(self, i: int) -> np.ndarray:
        p, n = int(self._prev[i]), int(self._n[i])
        buf = self._last.pop(p, None) if p >= 0 else None
        if buf is None:
            rows = self.ds.call_rows(i)
            buf = np.empty(max(2 * n, 64), dtype=np.int64)
            buf[:n] = rows
        else:
            shared, start = int(self._shared[i]), int(self._start[i])
            if buf.size < n:
                buf = np.concatenate([buf[:shared], np.empty(2 * n - shared, np.int64)])
            buf[shared:n] = self.ds.tail_rows[start : start + n - shared]
        self._last[i] = buf
        return buf[:n]


def _npy_header(dtype: np.dtype, shape: tuple, size: int | None = None) -> bytes:
    """An .npy (version 1.0) header, padded with spaces to `size` bytes (default: the next
    multiple of 64), so a header written last can fill exactly the room reserved for it."""
    body = repr(
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    ).encode("latin1")
    size = size if size is not None else -(-(10 + len(body) + 1) // 64) * 64
    pad = size - 10 - len(body) - 1
    if pad < 0:
        raise DecodeError(f".npy header needs {10 + len(body) + 1} bytes, {size} reserved")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", size - 10) + body + b" " * pad + b"\n"


class _NpyAppender:
    """An .npy file written by appending rows; its header is filled in at the end."""

    def __init__(self, path: Path, dtype, row_shape: tuple = ()):
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), row_shape, 0
        # room for the header of the largest shape it could ever have
        self.header_size = len(_npy_header(self.dtype, (10**18, *row_shape)))
        self.fh = open(path, "wb")
        self.fh.write(b"\0" * self.header_size)

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self.fh.write(memoryview(arr.reshape(-1)).cast("B"))  # its bytes, never copied
        self.rows += arr.shape[0] if arr.ndim else 1

    def close(self) -> None:
        header = _npy_header(self.dtype, (self.rows, *self.row_shape), self.header_size)
        self.fh.seek(0)
        self.fh.write(header)
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


class DatasetWriter:
    """Append decoded traces into a folder aside; `publish` makes it visible atomically."""

    def __init__(self, root: Path | str, filler: np.ndarray, sub_blocks: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        remove_abandoned(self.root)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{_writer()}-", dir=self.root))
        np.save(self.tmp / "filler.npy", np.ascontiguousarray(filler, dtype=np.int32))
        self.filler = filler
        self._arrays = {
            "block_trace": _NpyAppender(self.tmp / "block_trace.npy", np.int32),
            "block_id": _NpyAppender(self.tmp / "block_id.npy", np.int64),
            "block_offsets": _NpyAppender(self.tmp / "block_offsets.npy", np.uint32, (sub_blocks,)),
            "tail_rows": _NpyAppender(self.tmp / "tail_rows.npy", np.int64),
            "calls": _NpyAppender(self.tmp / "calls.npy", CALLS_DTYPE),
        }
        self._open = True
        self.won = False  # whether `publish` renamed this writer's folder into place
        self.traces: list[dict] = []
        self.n_blocks = self.n_rows = self.n_calls = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()

    def append(self, piece) -> None:
        """Append one decoded trace (a `TracePiece`, rows and calls local to it)."""
        t = len(self.traces)
        calls = dict(piece.calls)
        m = piece.n_calls
        calls["trace"] = np.full(m, t, CALL_COLUMNS["trace"])
        calls["rows_start"] = piece.calls["rows_start"] + self.n_rows
        calls["prev"] = np.where(piece.calls["prev"] >= 0, piece.calls["prev"] + self.n_calls, -1)
        self.append_arrays(
            [piece.trace],
            np.full(piece.block_id.size, t, np.int32),
            piece.block_id,
            piece.block_offsets,
            piece.tail_rows + self.n_blocks if self.n_blocks else piece.tail_rows,
            calls,
        )

    def append_arrays(self, traces, block_trace, block_id, offsets, tail_rows, calls) -> None:
        """Append traces already numbered for this position in the dataset."""
        self.traces.extend(traces)
        for name, arr in (
            ("block_trace", block_trace),
            ("block_id", block_id),
            ("block_offsets", offsets),
            ("tail_rows", tail_rows),
        ):
            self._arrays[name].append(arr)
        n = int(np.asarray(calls["tokens_in"]).size)
        records = np.empty(n, dtype=CALLS_DTYPE)
        for k in CALL_COLUMNS:
            records[k] = calls[k]
        self._arrays["calls"].append(records)
        self.n_blocks += int(np.asarray(block_id).size)
        self.n_rows += int(np.asarray(tail_rows).size)
        self.n_calls += n

    def _finish_files(self) -> None:
        """Close the arrays, then write the Parquet tables. calls.parquet is written from
        calls.npy, in row groups: Parquet writing costs about 70 MB of memory the first time
        (measured), so it waits until the decoding workers are done."""
        if not self._open:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._open = False
        for a in self._arrays.values():
            a.close()
        schema = pa.schema([(k, pa.from_numpy_dtype(v)) for k, v in CALL_COLUMNS.items()])
        records = np.load(self.tmp / "calls.npy", mmap_mode="r")
        with pq.ParquetWriter(self.tmp / "calls.parquet", schema) as out:
            for rows in row_chunks(records, min(CHUNK_ROWS, 1 << 16)):
                columns = [pa.array(np.ascontiguousarray(rows[k])) for k in CALL_COLUMNS]
                out.write_table(pa.Table.from_arrays(columns, schema=schema))
            if not len(records):
                out.write_table(schema.empty_table())
        del records
        pq.write_table(pa.Table.from_pylist(self.traces), self.tmp / "traces.parquet")

    def dataset(self, manifest: dict | None = None) -> DecodedDataset:
        """The dataset written so far, read back from the folder aside (before publishing)."""
        self._finish_files()
        return _read(self.tmp, manifest or {})

    def publish(self, key: str, manifest: dict) -> Path:
        """Checksums into the manifest, manifest last, rename into place as `<root>/<key>`;
        a complete dataset already there wins."""
        final = self.root / key
        self._finish_files()
        files = {p.name: _sha256(p) for p in sorted(self.tmp.iterdir())}
        manifest = dict(manifest, files=files)
        files[MANIFEST] = _manifest_digest(manifest)  # the manifest's own content, checked too
        (self.tmp / MANIFEST).write_bytes(
            orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )
        _fsync_dir(self.tmp)
        for attempt in range(2):
            if is_complete(final):
                break  # a complete dataset already there wins
            try:
                os.rename(self.tmp, final)
                self.won = True
                break
            except OSError:
                if is_complete(final):
                    break
                if attempt or not final.exists():
                    raise
                # a visible folder without its manifest is damaged (one is only ever renamed
                # into place whole): move it aside, then publish ours in its place
                quarantine(final)
        _fsync_path(self.root)
        self.abort()
        return final

    def abort(self) -> None:
        """Drop the folder aside (after a failure, or once published)."""
        self._open = False
        for a in self._arrays.values():
            a.fh.close()
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)


TMP_PREFIX = ".tmp-decode-"


def _writer() -> str:
    """`<pid>@<host>`: the writer of a folder aside (a pid means something on its host only)."""
    return f"{os.getpid()}@{socket.gethostname()}"


def remove_abandoned(root: Path) -> list[Path]:
    """Remove folders aside left by writers that died (killed mid-write): a folder aside is
    named after its writer's pid and host, and one whose process is gone is never published.
    Folders of writers on other hosts (a root shared over the network) are left alone."""
    removed = []
    for p in root.glob(f"{TMP_PREFIX}*"):
        # .tmp-decode-<pid>@<host>-<mkdtemp suffix, no '-'>; older ones: .tmp-decode-<pid>-...
        pid, _, host = p.name[len(TMP_PREFIX) :].rsplit("-", 1)[0].partition("@")
        if host and host != socket.gethostname():
            continue
        try:
            pid = int(pid)
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def verify_dataset(path: Path | str) -> str | None:
    """None when every file listed in the manifest has its recorded sha256; else what is wrong."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except (DecodeError, ValueError) as exc:
        return str(exc)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{path}: manifest lists no files"
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            return f"{f}: missing"
        # the manifest's entry is the digest of its own content (manifests written before it
        # existed have none); every other entry is a file's sha256
        try:
            actual = _manifest_digest(manifest) if name == MANIFEST else _sha256(f)
        except OSError as exc:  # gone or unreadable meanwhile (moved aside by another reader)
            return f"{f}: unreadable ({exc.strerror or exc})"
        if actual != digest:
            return f"{f}: checksum mismatch"
    return None


def _manifest_digest(manifest: dict) -> str:
    """sha256 of a manifest's content, its own entry in `files` left out (canonical JSON)."""
    files = {k: v for k, v in manifest.get("files", {}).items() if k != MANIFEST}
    return hashlib.sha256(
        orjson.dumps(dict(manifest, files=files), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def quarantine(path: Path | str) -> Path:
    """Move a corrupt dataset out of the way (kept for inspection, never read again). Each
    call gets its own name; a dataset another process moved away first is left alone."""
    path = Path(path)
    aside = path.with_name(
        f".corrupt-{path.name}-{int(time.time())}-{os.getpid()}-{secrets.token_hex(4)}"
    )
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        pass  # already moved aside (or replaced) by a concurrent reader of the same key
    return aside


@contextmanager
def key_lock(root: Path | str, key: str):
    """Hold an exclusive lock on one decode key under `root` (a second writer of the same key
    waits, then finds it published). The kernel drops the lock when its process dies, so a
    killed writer never leaves a stale lock behind."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{key}", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# sha256 of the files this process has read whole, by file identity (device, inode, size,
# mtime, ctime): every step of an in-process Dagster run verifies the datasets it opens, and a
# file unchanged since this process hashed it (its writer's manifest, or an earlier step's
# check) is not read again. Any write, truncation, rename over it or chmod changes the
# identity. An entry is kept only when the file's times were older than the hashing by more
# than a clock tick (the kernel stamps files with a coarse clock): a write in the same tick
# would leave the same identity (git calls such entries "racily clean").
_DIGESTS: dict[tuple, str] = {}
_RACY_NS = 50_000_000


def _identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _sha256(path: Path) -> str:
    before = os.stat(path)
    ident = _identity(before)
    if (known := _DIGESTS.get(ident)) is not None:
        return known
    started = time.time_ns()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    settled = max(before.st_mtime_ns, before.st_ctime_ns) < started - _RACY_NS
    if settled and _identity(os.stat(path)) == ident:
        _DIGESTS[ident] = digest
    return digest


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_path(path)


def _fsync_path(path: Path) -> None:
    """fsync a folder itself, so the names in it (a rename into it) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(path: Path | str) -> bool:
    return (Path(path) / MANIFEST).is_file()


def provenance_path(dataset: Path | str) -> Path:
    """Where the provenance record of the dataset folder `dataset` is kept: beside it, never in
    it (its bytes are content only)."""
    dataset = Path(dataset)
    return dataset.parent / PROVENANCE / f"{dataset.name}.json"


def read_provenance(dataset: Path | str) -> dict:
    """The provenance record of a dataset folder ({} when there is none): beside it, or at
    store key `provenance/<prefix>/<key>.json` when the folder is `<store>/<prefix>/<key>`."""
    dataset = Path(dataset)
    for p in (
        provenance_path(dataset),
        dataset.parent.parent / "provenance" / dataset.parent.name / f"{dataset.name}.json",
    ):
        try:
            record = orjson.loads(p.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(record, dict):
            return record
    return {}


def read_manifest(path: Path | str) -> dict:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise DecodeError(f"{path}: not a decoded dataset (no manifest.json)")
    try:
        manifest = orjson.loads(p.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise DecodeError(f"{p}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise DecodeError(f"{p}: unreadable manifest (not a JSON object)")
    return manifest


def _read(path: Path, manifest: dict) -> DecodedDataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        traces = pq.read_table(path / "traces.parquet").to_pylist()
        if (path / "calls.npy").is_file():
            records = np.load(path / "calls.npy", mmap_mode="r")
            calls = {k: records[k] for k in CALL_COLUMNS}
        else:  # a folder written before calls.npy existed
            records = None
            calls_t = pq.read_table(path / "calls.parquet")
            calls = {k: calls_t.column(k).to_numpy() for k in CALL_COLUMNS}
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        raise DecodeError(f"{path}: cannot read dataset ({exc})") from None
    return DecodedDataset(
        calls=calls, traces=traces, manifest=manifest, path=path, records=records, **arrays
    )


def open_dataset(path: Path | str, verify: bool = False) -> DecodedDataset:
    """Open a stored dataset (arrays memory-mapped). `verify` re-checks every file's sha256."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify and (problem := verify_dataset(path)) is not None:
        raise DecodeError(f"{problem}; the stored dataset is corrupt")
    return _read(path, manifest)
