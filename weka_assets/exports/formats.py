"""Decoded datasets exported to the files benchmark tools read (no Dagster here).

Three formats, one line per call, all in the corpus timeline order of
`replay.corpus_wide.timeline_order` (calls sorted by (t_abs, trace index, index in the
dataset), stable; t_abs as recorded, each trace on its own clock), each with a sidecar
`<out>.meta.json`:

- `mooncake`: `{"timestamp": ms, "input_length", "output_length", "hash_ids"}`. `hash_ids` is
  the call's whole-prompt block list (cumulative, not incremental), renumbered into one
  corpus-wide namespace that keeps the decoded scope: two block rows are one block exactly
  when their `block_offsets` rows (and block sizes) are equal (`block_classes`); new ids are
  0, 1, ... by first appearance in the file. One block size per file: a dataset with several
  is refused (export its traces per block size instead).
- `aiperf-payload`: aiperf's `mooncake_trace` lines with a verbatim `/v1/completions` body,
  `{"session_id", "timestamp", "output_length", "payload": {"prompt": [token ids],
  "max_tokens"[, "model"]}}`: the exact decoded tokens, no text round trip.
- `text`: `{"session", "trace", "timestamp", "delay", "text", "max_tokens"}` for text-only
  clients; the text is the tokenizer's decode of the expanded tokens, and the sidecar states
  the re-tokenisation drift a server's encode would add.

Sessions are conversations: `<trace id>:<conv>` (the parent's calls, or one subagent's).
Everything is streamed (one call's tokens at a time) and written atomically
(`weka_assets.atomic.atomic_write`): a failed export leaves no file at the target, the data
file is renamed into place first and its sidecar last, and both depend on the dataset's
content only.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from weka_assets.atomic import atomic_write
from weka_assets.decoding.dataset import DecodedDataset, RowWalker, open_dataset
from weka_assets.decoding.tokenizers import TokenizerSpec, resolve_tokenizer
from weka_assets.errors import WekaError
from weka_assets.replay.corpus_wide import ORDERING, block_classes, timeline_order

FORMATS = ("mooncake", "aiperf-payload", "text")
EXPORT_VERSION = 1  # the line layout of every format; bump on any change
TIMESTAMP = "milliseconds: round(t_abs * 1000), t_abs as recorded on the trace's own clock"
SESSION = "<trace id>:<conv>: one conversation (the parent's calls, or one subagent's)"
FLUSH_BYTES = 1 << 22
ProgressFn = Callable[[str, int, int, str], None]


class ExportError(WekaError):
    """A dataset this export cannot write (several block sizes, an unknown tokenizer)."""


@dataclass
class ExportSummary:
    format: str
    path: Path
    meta_path: Path
    lines: int
    bytes: int
    sha256: str
    meta: dict

    def as_dict(self) -> dict:
        return {
            "format": self.format,
            "path": str(self.path),
            "meta": str(self.meta_path),
            "lines": self.lines,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "decode_key": self.meta["dataset"]["decode_key"],
        }


def meta_path(out: Path | str) -> Path:
    """The sidecar of an export file: `<out>.meta.json`."""
    out = Path(out)
    return out.with_name(out.name + ".meta.json")


class _Lines:
    """Buffered JSON lines into a file handle, counted and hashed as written."""

    def __init__(self, fh):
        self.fh, self.buf, self.size = fh, [], 0
        self.lines = self.bytes = 0
        self.sha = hashlib.sha256()

    def add(self, obj) -> None:
        line = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        self.buf.append(line)
        self.size += len(line)
        self.lines += 1
        if self.size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        data = b"".join(self.buf)
        self.fh.write(data)
        self.sha.update(data)
        self.bytes += len(data)
        self.buf, self.size = [], 0


def _timeline(ds: DecodedDataset):
    """(order, timestamps in ms in that order, a walker yielding each call's block rows)."""
    order = timeline_order(ds)
    ms = np.rint(ds.column("t_abs")[order] * 1000.0).astype(np.int64)
    prev = ds.column("prev")
    has_next = np.zeros(ds.n_calls, dtype=bool)
    has_next[prev[prev >= 0]] = True
    walker = RowWalker(ds)

    def rows(i: int) -> np.ndarray:
        r = walker.rows(i)  # the conversation's previous call came earlier on the timeline
        if not has_next[i]:
            walker.forget(i)  # the buffer stays valid until the next rows() call
        return r

    return order, ms, rows


def _sessions(ds: DecodedDataset) -> tuple[np.ndarray, np.ndarray, list[str]]:
    trace, conv = ds.column("trace"), ds.column("conv")
    return trace, conv, [str(t["id"]) for t in ds.traces]


def _dataset_meta(ds: DecodedDataset) -> dict:
    m = ds.manifest if isinstance(ds.manifest, dict) else {}
    material = m.get("key_material") if isinstance(m.get("key_material"), dict) else {}
    return {
        "decode_key": ds.decode_key,
        "manifest_version": m.get("manifest_version"),
        "tokenizer_source": m.get("tokenizer_source"),
        "tokenizer": material.get("tokenizer"),
        "traces": len(ds.traces),
        "calls": ds.n_calls,
    }


def _tick(progress: ProgressFn | None, done: int, total: int) -> None:
    if progress is not None and (done == total or done % 1024 == 0):
        progress("export", done, total, "calls")


def _write_mooncake(ds: DecodedDataset, out: _Lines, progress, **_) -> dict:
    sizes = ds.block_sizes
    if len(sizes) > 1:
        raise ExportError(
            f"the dataset has {len(sizes)} block sizes ({', '.join(map(str, sizes))}); a Mooncake "
            "file has one: export each block size's traces separately"
        )
    order, ms, rows = _timeline(ds)
    cls, n_cls = block_classes(ds)
    new_id = np.full(n_cls, -1, dtype=np.int64)
    next_id = 0
    tin, tout = ds.column("tokens_in"), ds.column("tokens_out")
    for n, i in enumerate(order.tolist()):
        k = cls[rows(i)]
        ids = new_id[k]
        if ids.size and ids.min() < 0:
            fresh = k[ids < 0]
            u, first = np.unique(fresh, return_index=True)
            u = u[np.argsort(first, kind="stable")]  # numbered by first appearance
            new_id[u] = np.arange(next_id, next_id + u.size)
            next_id += int(u.size)
            ids = new_id[k]
        out.add(
            {
                "timestamp": int(ms[n]),
                "input_length": int(tin[i]),
                "output_length": int(tout[i]),
                "hash_ids": ids,
            }
        )
        _tick(progress, n + 1, order.size)
    return {
        "block_size": sizes[0] if sizes else None,
        "hash_ids": "cumulative: each line lists the whole prompt's blocks, not only the new ones",
        "hash_id_namespace": "one for the whole file, numbered 0.. by first appearance; two ids "
        "are equal exactly when the decoded blocks are (the decode scope is kept)",
        "distinct_blocks": next_id,
        "fields": ["timestamp", "input_length", "output_length", "hash_ids"],
    }


def _write_payload(ds: DecodedDataset, out: _Lines, progress, model: str | None = None, **_):
    order, ms, rows = _timeline(ds)
    trace, conv, ids = _sessions(ds)
    tout = ds.column("tokens_out")
    tokens = 0
    for n, i in enumerate(order.tolist()):
        prompt = ds.expand_call(i, rows(i))
        tokens += prompt.size
        payload = {"prompt": prompt, "max_tokens": int(tout[i])}
        if model:
            payload["model"] = model
        out.add(
            {
                "session_id": f"{ids[trace[i]]}:{int(conv[i])}",
                "timestamp": int(ms[n]),
                "output_length": int(tout[i]),
                "payload": payload,
            }
        )
        _tick(progress, n + 1, order.size)
    return {
        "tokens": tokens,
        "payload": "a verbatim /v1/completions body: prompt = the call's exact decoded token "
        "ids, max_tokens = its recorded output length" + (f", model = {model!r}" if model else ""),
        "session_id": SESSION,
        "fields": ["session_id", "timestamp", "output_length", "payload"],
    }


def _write_text(ds: DecodedDataset, out: _Lines, progress, spec: TokenizerSpec, **_) -> dict:
    from weka_assets.decoding.drift import DEFINITION, codec, dataset_drift

    _, decode = codec(spec)
    order, ms, rows = _timeline(ds)
    trace, conv, ids = _sessions(ds)
    tout = ds.column("tokens_out")
    trace_start: dict[int, int] = {}
    last: dict[tuple[int, int], int] = {}
    chars = 0
    for n, i in enumerate(order.tolist()):
        t, c, now = int(trace[i]), int(conv[i]), int(ms[n])
        start = trace_start.setdefault(t, now)  # the trace's first call on the timeline
        before = last.get((t, c), start)
        last[(t, c)] = now
        text = decode(ds.expand_call(i, rows(i)).tolist())
        chars += len(text)
        out.add(
            {
                "session": f"{ids[t]}:{c}",
                "trace": ids[t],
                "timestamp": now,
                "delay": now - before,
                "text": text,
                "max_tokens": int(tout[i]),
            }
        )
        _tick(progress, n + 1, order.size)
    return {
        "characters": chars,
        "session": SESSION,
        "delay": "ms since the session's previous call; for its first call, since its trace's "
        "first call (0 for the parent, the spawn offset for a subagent)",
        "text": "tokenizer.decode of the call's exact decoded tokens (special tokens kept)",
        "tokenizer_used": {"name": spec.name, "files_sha256": spec.files_sha256},
        "retokenization_drift": dataset_drift(ds, spec),
        "drift_note": "a text client's server re-encodes the text: encode(decode(tokens)) differs "
        "from the tokens by this much, so its prefix-cache behaviour can differ from the "
        "token-id exports'; the dataset's one figure (its manifest's, measured at decode): "
        + DEFINITION,
        "fields": ["session", "trace", "timestamp", "delay", "text", "max_tokens"],
    }


WRITERS = {"mooncake": _write_mooncake, "aiperf-payload": _write_payload, "text": _write_text}


def dataset_tokenizer(ds: DecodedDataset, override: str | None = None) -> TokenizerSpec:
    """The tokenizer a dataset was decoded with, from its manifest's `tokenizer_source`
    (`builtin:NAME`, `hf:ORG/NAME`; a `local:NAME` folder must be given as `override`), checked
    against the files hash in its key material."""
    m = ds.manifest if isinstance(ds.manifest, dict) else {}
    source = m.get("tokenizer_source")
    if override:
        name = override
    elif isinstance(source, str) and source.startswith(("builtin:", "hf:")):
        name = source.split(":", 1)[1]
    else:
        raise ExportError(
            f"the dataset's tokenizer {source!r} cannot be found from its manifest: "
            "name its folder (--tokenizer PATH)"
        )
    spec = resolve_tokenizer(name)
    material = m.get("key_material") if isinstance(m.get("key_material"), dict) else {}
    expected = (material.get("tokenizer") or {}).get("files_sha256")
    if expected and spec.files_sha256 != expected:
        raise ExportError(
            f"tokenizer {name!r} is not the one the dataset was decoded with "
            f"(files sha256 {spec.files_sha256[:12]}, dataset {expected[:12]})"
        )
    return spec


def export_dataset(
    dataset: DecodedDataset | Path | str,
    fmt: str,
    out: Path | str,
    *,
    tokenizer: str | None = None,
    model: str | None = None,
    progress: ProgressFn | None = None,
) -> ExportSummary:
    """Write `dataset` as `fmt` to `out` and its sidecar to `<out>.meta.json`, atomically."""
    if fmt not in WRITERS:
        raise ExportError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    ds = dataset if isinstance(dataset, DecodedDataset) else open_dataset(dataset)
    out = Path(out)
    spec = dataset_tokenizer(ds, tokenizer) if fmt == "text" else None
    with atomic_write(out) as fh:
        lines = _Lines(fh)
        details = WRITERS[fmt](ds, lines, progress, model=model, spec=spec)
        lines.flush()
    meta = {
        "format": fmt,
        "export_version": EXPORT_VERSION,
        "file": out.name,
        "lines": lines.lines,
        "bytes": lines.bytes,
        "sha256": lines.sha.hexdigest(),
        "ordering": ORDERING,
        "timestamp": TIMESTAMP,
        "dataset": _dataset_meta(ds),
        **details,
    }
    sidecar = meta_path(out)
    with atomic_write(sidecar) as fh:
        fh.write(orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return ExportSummary(fmt, out, sidecar, lines.lines, lines.bytes, lines.sha.hexdigest(), meta)
