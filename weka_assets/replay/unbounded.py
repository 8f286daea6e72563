"""Prefix-cache figures with an unbounded cache: theoretical (from ids) and token replay (from
the decoded tokens), compared call by call.

The token replay keys each full block by its decoded tokens (a content hash of the gathered
token ids, chained with the previous block's key), never by ids: if decoding lost or invented a
shared prefix, its hits would differ from the theoretical ones and `fidelity_mismatched_calls`
would say so. Each distinct block row's content hash is computed once (memoised), from its
tokens.
"""

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from weka_assets.decoding.dataset import ROLES, DecodedDataset
from weka_assets.replay.prefix import chain_keys, leading_hits, token_block_hash

ROW_CHUNK = 1 << 16


class HitFigures(BaseModel):
    calls: int
    blocks: int  # all hash ids (the theoretical total)
    hits: int
    full_blocks: int
    full_block_hits: int
    token_blocks: int  # full blocks of the expanded prompts
    token_hits: int
    fidelity_mismatched_calls: int
    theoretical_hit_rate: float | None
    theoretical_full_block_hit_rate: float | None
    token_replay_hit_rate: float | None


class ReplayResult(HitFigures):
    per_role: dict[str, HitFigures]
    per_trace: list[dict]
    cross_trace_shared_blocks: int
    dataset: str | None = None


@dataclass
class CallFigures:
    """Per-call figures, aligned with the dataset's calls table."""

    total: np.ndarray
    hits: np.ndarray
    full_total: np.ndarray
    full_hits: np.ndarray
    token_total: np.ndarray
    token_hits: np.ndarray

    def mismatched(self) -> np.ndarray:
        return self.token_hits != self.full_hits


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def figures(cf: CallFigures, mask: np.ndarray | slice = slice(None)) -> HitFigures:
    s = {
        k: int(getattr(cf, k)[mask].sum())
        for k in ("total", "hits", "full_total", "full_hits", "token_total", "token_hits")
    }
    return HitFigures(
        calls=int(cf.total[mask].size),
        blocks=s["total"],
        hits=s["hits"],
        full_blocks=s["full_total"],
        full_block_hits=s["full_hits"],
        token_blocks=s["token_total"],
        token_hits=s["token_hits"],
        fidelity_mismatched_calls=int(cf.mismatched()[mask].sum()),
        theoretical_hit_rate=_rate(s["hits"], s["total"]),
        theoretical_full_block_hit_rate=_rate(s["full_hits"], s["full_total"]),
        token_replay_hit_rate=_rate(s["token_hits"], s["token_total"]),
    )


def row_content_hashes(ds: DecodedDataset) -> np.ndarray:
    """Content hash of every block row's tokens (memoised per distinct block)."""
    out = np.empty(ds.block_id.size, dtype=np.uint64)
    bs_of_trace = np.array([t["block_size"] for t in ds.traces], dtype=np.int64)
    for bs in ds.block_sizes:
        rows = np.flatnonzero(bs_of_trace[ds.block_trace] == bs)
        for a in range(0, rows.size, ROW_CHUNK):
            chunk = rows[a : a + ROW_CHUNK]
            out[chunk] = token_block_hash(ds.block_tokens(chunk, bs))
    return out


def _tail_block_hashes(ds: DecodedDataset, i: int) -> np.ndarray:
    """Content hashes of full blocks made of unhashed tail filler (truncated id lists)."""
    c = ds.calls
    bs = int(c["block_size"][i])
    extra = int(c["tokens_in"][i]) // bs - int(c["n_full"][i])
    if extra <= 0:
        return np.empty(0, dtype=np.uint64)
    start = int(c["n_full"][i]) * bs
    tokens = ds.expand_call(i)[start : start + extra * bs].reshape(extra, bs)
    return token_block_hash(tokens)


def token_block_keys(
    ds: DecodedDataset, calls: np.ndarray, content: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The token replay's keys: for each call in `calls`, its `tokens_in // block_size` full
    blocks keyed by content hash of their tokens (hashed blocks from the memoised per-row
    `content`, unhashed tail blocks from their expanded tokens), chained per call.
    Returns (keys concatenated in `calls` order, blocks per call)."""
    c = ds.calls
    n_full = c["n_full"][calls].astype(np.int64)
    lengths = (c["tokens_in"][calls] // c["block_size"][calls]).astype(np.int64)
    if content is None:
        content = row_content_hashes(ds)
    block_content = content[ds.leading_rows(calls, n_full)]
    extra = lengths - n_full
    if (extra > 0).any():
        out = np.empty(int(lengths.sum()), dtype=np.uint64)
        starts = np.cumsum(lengths) - lengths
        offsets = np.arange(int(n_full.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(n_full) - n_full, n_full
        )
        out[np.repeat(starts, n_full) + offsets] = block_content
        for j in np.flatnonzero(extra > 0):
            a = int(starts[j] + n_full[j])
            out[a : a + int(extra[j])] = _tail_block_hashes(ds, int(calls[j]))
        block_content = out
    return chain_keys(block_content, lengths), lengths


def replay_unbounded(ds: DecodedDataset, progress=None) -> tuple[ReplayResult, CallFigures]:
    """All unbounded-cache figures of a decoded dataset, per corpus, role and trace."""
    c = ds.calls
    m = ds.n_calls
    n_ids = c["n_ids"].astype(np.int64)
    n_full = c["n_full"].astype(np.int64)
    token_total = (c["tokens_in"] // c["block_size"]).astype(np.int64)
    cf = CallFigures(
        total=n_ids,
        hits=np.zeros(m, np.int64),
        full_total=n_full,
        full_hits=np.zeros(m, np.int64),
        token_total=token_total,
        token_hits=np.zeros(m, np.int64),
    )
    content = row_content_hashes(ds)
    trace_keys = []
    slices = ds.trace_slices()
    for done, sl in enumerate(slices, start=1):
        if progress is not None:
            progress("replay", done, len(slices), "traces")
        calls = np.arange(sl.start, sl.stop)
        if calls.size == 0:
            continue
        ids = ds.block_id[ds.leading_rows(calls, n_ids[calls])]
        cf.hits[calls] = leading_hits(ids, n_ids[calls])
        full_ids = ds.block_id[ds.leading_rows(calls, n_full[calls])]
        cf.full_hits[calls] = leading_hits(full_ids, n_full[calls])
        keys, _ = token_block_keys(ds, calls, content)
        cf.token_hits[calls] = leading_hits(keys, token_total[calls])
        trace_keys.append(np.unique(keys))
    cross = 0
    if len(trace_keys) > 1:
        allk = np.concatenate(trace_keys)
        cross = int(allk.size - np.unique(allk).size)
    overall = figures(cf)
    per_role = {role: figures(cf, ds.role_mask(role)) for role in ROLES}
    per_trace = []
    for t, sl in zip(ds.traces, ds.trace_slices(), strict=True):
        f = figures(cf, sl)
        per_trace.append(
            {
                "trace": t["id"],
                "calls": f.calls,
                "blocks": f.blocks,
                "theoretical_hit_rate": f.theoretical_hit_rate,
                "theoretical_full_block_hit_rate": f.theoretical_full_block_hit_rate,
                "token_replay_hit_rate": f.token_replay_hit_rate,
                "fidelity_mismatched_calls": f.fidelity_mismatched_calls,
            }
        )
    result = ReplayResult(
        **overall.model_dump(),
        per_role=per_role,
        per_trace=per_trace,
        cross_trace_shared_blocks=cross,
        dataset=str(ds.path) if ds.path else None,
    )
    return result, cf
