"""The blast radius of a decoder change: what a new decode of a corpus changes, with numbers.

When the decoder's semantics change (a manifest-version bump, such as the historic scope fix),
whoever made the change states its effect by comparing the current decoded dataset of a corpus
with an earlier stored dataset of the same corpus and tokenizer under another decode key.

- Calls are aligned by (trace id, conversation, request, inner), never by row order; two
  datasets that do not hold the same calls (another corpus) raise `DecodeError`.
- Tokens are compared per block position, never by expanding every call: full blocks by the
  content hash of their decoded tokens (`row_content_hashes`, 64 bits, computed from the
  tokens themselves), a hashed partial last block by its first `partial_len` tokens, the
  unhashed tail by its spec (length, filler offset, filler sha256) or, when the spec differs,
  by gathering only the tail. A call whose layout differs (another split into full blocks,
  partial block and tail) is expanded whole; decoders of one corpus never produce that today.
- Cache behaviour is the unbounded token replay's hits per call (`replay_unbounded`).
- Cause: for a call whose cache hits changed, the hash id at the first block position where
  the two runs differ (index `min(hits_current, hits_previous)`); for a call whose tokens
  changed, the id of its first changed full block. The cause is the conversation that first
  sent that id as a full block (earliest in replay order within the trace, i.e. the call
  that put it into the cache): `parent` (conversation 0, for a subagent call), `sibling`
  (another subagent of the trace; for a parent call, any subagent), or `own` (the call's own
  conversation). A position without a hash id (a full block of an unhashed tail) is `own`:
  tail filler is keyed by the call's own conversation. A change in the partial block or tail
  only is attributed by the partial block's id when it has one, else `own`.
"""

from pathlib import Path

import numpy as np
import orjson
from pydantic import BaseModel

from weka_assets.arrays import distinct
from weka_assets.decoding.dataset import ROLES, DecodedDataset, is_complete
from weka_assets.errors import DecodeError
from weka_assets.replay.plotting import count_labels, figure_png, new_figure
from weka_assets.replay.prefix import segment_positions
from weka_assets.replay.unbounded import (
    CallFigures,
    ReplayResult,
    replay_unbounded,
    row_content_hashes,
)

CAUSES = ("parent", "sibling", "own")  # int8 codes 0, 1, 2 of the per-call cause arrays
PARENT, SIBLING, OWN = range(3)
NO_CAUSE = -1
CHUNK_IDS = 1 << 21  # hash ids per chunk of whole traces (bounds memory on large corpora)
TAIL_BATCH_TOKENS = 1 << 22
# key material that must be equal for two datasets to be decodes of the same inputs (block
# sizes: one Mooncake corpus read at two block sizes is two inputs)
SAME_INPUTS = ("corpus_digest", "tokenizer", "settings", "excluded_traces", "block_sizes")


class RoleBlast(BaseModel):
    calls: int
    calls_tokens_changed: int  # calls whose expanded tokens differ
    full_blocks_changed: int  # sum over calls of full-block positions whose tokens differ
    distinct_blocks_changed: int  # distinct (trace, hash id) full blocks changed in some call
    calls_cache_changed: int  # calls whose token-replay hits differ
    token_replay_hit_rate: float | None
    previous_token_replay_hit_rate: float | None
    hit_rate_change: float | None  # current - previous


class BlastRadius(RoleBlast):
    """JSON-serialisable summary of `blast_radius`."""

    current_key: str
    previous_key: str | None
    current_manifest_version: int | None
    previous_manifest_version: int | None
    per_role: dict[str, RoleBlast]
    by_cause: dict[str, int]  # calls whose cache hits changed, by cause
    tokens_changed_by_cause: dict[str, int]  # calls whose tokens changed, by cause
    table: list[dict]  # one row per role x cause

    def markdown(self) -> str:
        cur = f"`{self.current_key}` (manifest v{self.current_manifest_version})"
        if self.previous_key is None:
            return f"**Blast radius** of {cur}: no earlier dataset of this corpus to compare with."
        prev = f"`{self.previous_key}` (manifest v{self.previous_manifest_version})"
        lines = [f"**Blast radius** of {cur} against {prev}:", ""]
        lines.append(
            f"- {self.calls_tokens_changed} of {self.calls} calls change tokens"
            f"{_role_split(self, 'calls_tokens_changed')}; {self.full_blocks_changed} full-block "
            f"positions, {self.distinct_blocks_changed} distinct blocks."
        )
        lines.append(
            f"- {self.calls_cache_changed} of {self.calls} calls change prefix-cache hits"
            f"{_role_split(self, 'calls_cache_changed')}; cause: {_causes(self.by_cause)}."
        )
        if self.calls_tokens_changed:
            lines.append(
                "- first changed block of a changed call first sent by: "
                f"{_causes(self.tokens_changed_by_cause)}."
            )
        lines.append(
            f"- token-replay hit rate {_fmt(self.token_replay_hit_rate)}, was "
            f"{_fmt(self.previous_token_replay_hit_rate)} ({_fmt(self.hit_rate_change, sign=True)})."
        )
        return "\n".join(lines)


def _fmt(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.4f}" if sign else f"{x:.4f}"


def _causes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {counts.get(k, 0)}" for k in CAUSES)


def _role_split(br: BlastRadius, field: str) -> str:
    total = getattr(br, field)
    if not total:
        return ""
    per = {role: getattr(br.per_role[role], field) for role in ROLES}
    for role, n in per.items():
        if n == total:
            return f" (all {role})"
    return " (" + ", ".join(f"{role} {n}" for role, n in per.items()) + ")"


# ---- finding the dataset to compare with -----------------------------------------------------


def previous_key(candidates: dict[str, dict], current_manifest: dict) -> str | None:
    """Among `{decode key: manifest}` of complete datasets, the newest decoded from the same
    inputs as `current_manifest` (corpus digest, tokenizer, settings, excluded traces) under
    another decode key; None when there is none. Newest: the highest manifest version, then
    dataset format (a manifest holds no time: its bytes are content only; older ones' creation
    time still breaks ties), then decode key."""
    material = current_manifest.get("key_material")
    if not isinstance(material, dict):
        return None
    current_key = current_manifest.get("decode_key")
    best: tuple | None = None
    for key, m in sorted(candidates.items()):
        km = m.get("key_material") if isinstance(m, dict) else None
        if not isinstance(km, dict) or key == current_key:
            continue
        if any(km.get(f) != material.get(f) for f in SAME_INPUTS):
            continue
        rank = (
            _number(km.get("manifest_version")),
            _number(km.get("format")),
            _number(m.get("created_unix")),  # manifests of dataset format 3 and before
            key,
        )
        if best is None or rank > best:
            best = rank
    return best[-1] if best else None


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) else float("-inf")


def find_previous_dataset(datasets_root: Path | str, current: DecodedDataset) -> Path | None:
    """The newest complete dataset under `datasets_root` decoded from the same inputs as
    `current` under another decode key (see `previous_key`).

    Unreadable, partial or foreign folders are skipped, never raised on.
    """
    manifest = dict(current.manifest or {})
    manifest.setdefault("decode_key", current.path.name if current.path else None)
    try:
        children = sorted(Path(datasets_root).iterdir())
    except OSError:
        return None
    candidates = {}
    for child in children:
        m = _readable_manifest(child)
        if m is not None:
            candidates[m.get("decode_key", child.name)] = (m, child)
    key = previous_key({k: m for k, (m, _) in candidates.items()}, manifest)
    return candidates[key][1] if key else None


def _readable_manifest(folder: Path) -> dict | None:
    """The manifest of a complete dataset folder whose listed files exist; else None."""
    try:
        if folder.name.startswith(".") or not folder.is_dir() or not is_complete(folder):
            return None
        m = orjson.loads((folder / "manifest.json").read_bytes())
        if not isinstance(m, dict):
            return None
        files = m.get("files", {})
        if not isinstance(files, dict) or not all((folder / f).is_file() for f in files):
            return None
        return m
    except (OSError, ValueError):
        return None


# ---- alignment -------------------------------------------------------------------------------


def _describe(ds: DecodedDataset, i: int) -> str:
    c = ds.calls
    return (
        f"trace {ds.traces[int(c['trace'][i])]['id']!r} conv {int(c['conv'][i])} "
        f"request {int(c['request'][i])} inner {int(c['inner'][i])}"
    )


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def align_calls(current: DecodedDataset, previous: DecodedDataset) -> np.ndarray:
    """For every call of `current`, the index of the same call (trace id, conv, request,
    inner) in `previous`. Raises `DecodeError` naming what differs when the two datasets do not
    hold the same calls of the same recording."""
    cur_ids = [t["id"] for t in current.traces]
    prev_ids = [t["id"] for t in previous.traces]
    only_cur = sorted(set(cur_ids) - set(prev_ids))
    only_prev = sorted(set(prev_ids) - set(cur_ids))
    if only_cur or only_prev:
        raise DecodeError(
            "the datasets hold different traces (not the same corpus): "
            f"{len(only_cur)} only in the current ({_listing(only_cur)}), "
            f"{len(only_prev)} only in the previous ({_listing(only_prev)})"
        )
    index = {tid: k for k, tid in enumerate(cur_ids)}
    tmap = np.array([index[tid] for tid in prev_ids], dtype=np.int64)

    def keys(ds: DecodedDataset, trace: np.ndarray) -> np.ndarray:
        c = ds.calls
        return np.stack([trace, c["conv"], c["request"], c["inner"]]).astype(np.int64)

    kc = keys(current, current.calls["trace"].astype(np.int64))
    kp = keys(previous, tmap[previous.calls["trace"]] if tmap.size else previous.calls["trace"])
    oc, op = np.lexsort(kc[::-1]), np.lexsort(kp[::-1])
    sc, sp = kc[:, oc], kp[:, op]
    n = min(sc.shape[1], sp.shape[1])
    neq = np.flatnonzero((sc[:, :n] != sp[:, :n]).any(axis=0))
    if neq.size or sc.shape[1] != sp.shape[1]:
        j = int(neq[0]) if neq.size else n
        # in sorted order, the smaller key at the first difference is missing from the other
        if j < sc.shape[1] and (j >= sp.shape[1] or tuple(sc[:, j]) < tuple(sp[:, j])):
            where = f"{_describe(current, int(oc[j]))} is only in the current"
        else:
            where = f"{_describe(previous, int(op[j]))} is only in the previous"
        raise DecodeError(
            f"the datasets hold different calls ({current.n_calls} current, "
            f"{previous.n_calls} previous): {where}"
        )
    perm = np.empty(current.n_calls, dtype=np.int64)
    perm[oc] = op
    for col in ("block_size", "tokens_in", "n_ids"):
        bad = np.flatnonzero(current.calls[col] != previous.calls[col][perm])
        if bad.size:
            i = int(bad[0])
            raise DecodeError(
                f"the datasets record different calls (not the same corpus): {col} of "
                f"{_describe(current, i)} is {int(current.calls[col][i])} in the current, "
                f"{int(previous.calls[col][perm[i]])} in the previous ({bad.size} calls differ)"
            )
    return perm


# ---- comparison ------------------------------------------------------------------------------


def _trace_chunks(ds: DecodedDataset, limit: int) -> list[tuple[int, int]]:
    """Contiguous call ranges of whole traces, each holding about `limit` hash ids."""
    slices = ds.trace_slices()
    ids_before = np.concatenate([[0], np.cumsum(ds.calls["n_ids"], dtype=np.int64)])
    chunks, start = [], 0
    for sl in slices:
        if ids_before[sl.stop] - ids_before[start] >= limit and sl.stop > start:
            chunks.append((start, sl.stop))
            start = sl.stop
    if start < ds.n_calls:
        chunks.append((start, ds.n_calls))
    return chunks


class _Acc:
    """Per-call results of the comparison (aligned with current.calls)."""

    def __init__(self, m: int):
        self.full_changed = np.zeros(m, dtype=np.int64)
        self.first_changed = np.full(m, np.iinfo(np.int64).max, dtype=np.int64)
        self.rest_changed = np.zeros(m, dtype=bool)  # the partial block or tail remainder
        self.token_cause = np.full(m, NO_CAUSE, dtype=np.int8)
        self.cache_cause = np.full(m, NO_CAUSE, dtype=np.int8)
        self.distinct = {"all": 0, **{role: 0 for role in ROLES}}


def _compare_chunk(
    cur: DecodedDataset,
    prev: DecodedDataset,
    perm: np.ndarray,
    hc: np.ndarray,
    hp: np.ndarray,
    hits: tuple[np.ndarray, np.ndarray],
    a: int,
    b: int,
    acc: _Acc,
) -> None:
    c, p = cur.calls, prev.calls
    calls = np.arange(a, b, dtype=np.int64)
    pc = perm[calls]
    k = calls.size
    bs = c["block_size"][calls].astype(np.int64)
    token_total = c["tokens_in"][calls] // bs
    nid = c["n_ids"][calls].astype(np.int64)
    nfc = c["n_full"][calls].astype(np.int64)
    nfp = p["n_full"][pc].astype(np.int64)
    common = np.minimum(nfc, nfp)
    conv = c["conv"][calls].astype(np.int64)

    # every hash id of the chunk's calls, flat, in replay order within each trace
    rows_c = cur.leading_rows(calls, nid)
    rows_p = prev.leading_rows(pc, nid)
    ids = np.asarray(cur.block_id)[rows_c]
    if not np.array_equal(ids, np.asarray(prev.block_id)[rows_p]):
        j = int(np.repeat(np.arange(k), nid)[np.flatnonzero(ids != prev.block_id[rows_p])[0]])
        raise DecodeError(
            f"the datasets record different hash ids for {_describe(cur, int(calls[j]))} "
            "(not the same corpus)"
        )
    call_of, pos = segment_positions(nid)
    starts = np.cumsum(nid) - nid
    trace = c["trace"][calls].astype(np.int64)
    uniq, dense = np.unique(ids, return_inverse=True)
    key = (trace[call_of] - (trace.min() if k else 0)) * max(uniq.size, 1) + dense.ravel()

    # first sender of each (trace, id) as a full block, in replay order
    full = pos < nfc[call_of]
    sent_keys, first = np.unique(key[full], return_index=True)
    first_call = call_of[full][first]

    def cause_of(j: np.ndarray, q: np.ndarray, full_only: bool) -> np.ndarray:
        """Cause code of position q of local call j (`own` where it has no hash id)."""
        has_id = q < (nfc[j] if full_only else nid[j])
        sender = conv[j].copy()
        if has_id.any() and sent_keys.size:
            kk = key[starts[j[has_id]] + q[has_id]]
            s = np.minimum(np.searchsorted(sent_keys, kk), sent_keys.size - 1)
            found = (sent_keys[s] == kk) & (first_call[s] <= j[has_id])
            sender[np.flatnonzero(has_id)[found]] = conv[first_call[s[found]]]
        code = np.where(sender == 0, PARENT, SIBLING)
        return np.where(sender == conv[j], OWN, code).astype(np.int8)

    # full blocks both datasets hold at the same position: compare content hashes
    sel = np.flatnonzero(pos < common[call_of])
    changed = sel[hc[rows_c[sel]] != hp[rows_p[sel]]]
    ch_call, ch_pos = [call_of[changed]], [pos[changed]]

    same_layout = (
        (nfc == nfp)
        & (c["partial_len"][calls] == p["partial_len"][pc])
        & (c["tail_len"][calls] == p["tail_len"][pc])
    )
    # hashed partial last block: equal hashes mean equal tokens; else compare its prefix
    partial = c["partial_len"][calls].astype(np.int64)
    pj = np.flatnonzero(same_layout & (partial > 0))
    if pj.size:
        rc, rp = rows_c[starts[pj] + nfc[pj]], rows_p[starts[pj] + nfp[pj]]
        differ = hc[rc] != hp[rp]
        for size in np.unique(bs[pj[differ]]):
            g = np.flatnonzero(differ & (bs[pj] == size))
            tc, tp = cur.block_tokens(rc[g], int(size)), prev.block_tokens(rp[g], int(size))
            within = np.arange(int(size)) < partial[pj[g]][:, None]
            differ[g] = ((tc != tp) & within).any(axis=1)
        acc.rest_changed[a + pj[differ]] = True

    # unhashed tails of the same length: equal specs mean equal tokens; else gather the tails
    tail = c["tail_len"][calls].astype(np.int64)
    same_filler = (cur.manifest.get("key_material") or {}).get("filler_sha256") == (
        prev.manifest.get("key_material") or {}
    ).get("filler_sha256") and cur.filler.size == prev.filler.size
    tj = same_layout & (tail > 0)
    if same_filler:
        tj &= c["tail_offset"][calls] != p["tail_offset"][pc]
    tj = np.flatnonzero(tj)
    for batch in _batches(tj, tail[tj], TAIL_BATCH_TOKENS):
        tl = tail[batch]
        owner, w = segment_positions(tl)
        ic = (np.repeat(c["tail_offset"][calls[batch]], tl) + w) % cur.filler.size
        ip = (np.repeat(p["tail_offset"][pc[batch]], tl) + w) % prev.filler.size
        diff = np.asarray(cur.filler)[ic] != np.asarray(prev.filler)[ip]
        owner, w = owner[diff], w[diff]
        blk = w // bs[batch][owner]
        in_full = blk < tl[owner] // bs[batch][owner]
        acc.rest_changed[a + batch[distinct(owner[~in_full])]] = True
        span = int(blk.max()) + 1 if blk.size else 1
        pairs = distinct(owner[in_full] * span + blk[in_full])  # (call, tail block) once each
        ch_call.append(batch[pairs // span])
        ch_pos.append(nfc[batch[pairs // span]] + pairs % span)

    # another layout (never produced today): expand the two calls and compare from `common`
    for j in np.flatnonzero(~same_layout):
        tc, tp = cur.expand_call(int(calls[j])), prev.expand_call(int(pc[j]))
        size, t, m = int(bs[j]), int(token_total[j]), int(common[j])
        diff = tc != tp
        blocks = np.flatnonzero(diff[m * size : t * size].reshape(-1, size).any(axis=1))
        ch_call.append(np.full(blocks.size, j, dtype=np.int64))
        ch_pos.append(m + blocks)
        acc.rest_changed[a + j] = bool(diff[t * size :].any())

    ch_call, ch_pos = np.concatenate(ch_call), np.concatenate(ch_pos)
    acc.full_changed[a:b] += np.bincount(ch_call, minlength=k)
    np.minimum.at(acc.first_changed[a:b], ch_call, ch_pos)

    # distinct (trace, id) full blocks changed (positions without a hash id are not blocks)
    has_id = ch_pos < nfc[ch_call]
    changed_keys = key[starts[ch_call[has_id]] + ch_pos[has_id]]
    role = c["role"][calls][ch_call[has_id]]
    acc.distinct["all"] += int(distinct(changed_keys).size)
    for r, name in enumerate(ROLES):
        acc.distinct[name] += int(distinct(changed_keys[role == r]).size)

    # causes
    first = acc.first_changed[a:b]
    tok = np.flatnonzero((first < np.iinfo(np.int64).max) | acc.rest_changed[a:b])
    by_block = first[tok] < np.iinfo(np.int64).max
    codes = np.full(tok.size, OWN, dtype=np.int8)  # tail only: own
    codes[by_block] = cause_of(tok[by_block], first[tok[by_block]], full_only=True)
    part = ~by_block & (partial[tok] > 0)  # partial block only: by the partial block's id
    codes[part] = cause_of(tok[part], nfc[tok[part]], full_only=False)
    acc.token_cause[a + tok] = codes
    h_cur, h_prev = hits[0][calls], hits[1][calls]
    cj = np.flatnonzero(h_cur != h_prev)
    acc.cache_cause[a + cj] = cause_of(cj, np.minimum(h_cur[cj], h_prev[cj]), full_only=True)


def _batches(items: np.ndarray, sizes: np.ndarray, limit: int):
    """Consecutive slices of `items` whose sizes sum to about `limit` (at least one each)."""
    if items.size == 0:
        return
    bounds = np.searchsorted(np.cumsum(sizes), np.arange(limit, int(sizes.sum()), limit))
    for part in np.split(items, np.unique(bounds + 1)):
        if part.size:
            yield part


def blast_radius(
    current: DecodedDataset,
    previous: DecodedDataset | None,
    *,
    current_replay: tuple[ReplayResult, CallFigures] | None = None,
    previous_replay: tuple[ReplayResult, CallFigures] | None = None,
) -> tuple[BlastRadius, dict[str, np.ndarray]]:
    """Compare two decodes of one corpus call by call.

    Returns the summary and per-call arrays aligned with `current.calls`: `tokens_changed`,
    `cache_changed` (bool), `hits_current`, `hits_previous` (token-replay hits; -1 without a
    previous dataset), `full_blocks_changed`, `cause` (int8: index into `CAUSES` of a call whose
    cache hits changed, -1 otherwise) and `token_cause` (the same for a call whose tokens
    changed). Pass `replay_unbounded`'s results as `current_replay` / `previous_replay` when
    they are at hand, to save recomputing them.
    """
    cur_result, cur_cf = current_replay or replay_unbounded(current)
    m = current.n_calls
    hits_cur = cur_cf.token_hits.astype(np.int64)
    acc = _Acc(m)
    prev_result = None
    if previous is None:
        hits_prev = np.full(m, -1, dtype=np.int64)
    else:
        perm = align_calls(current, previous)
        prev_result, prev_cf = previous_replay or replay_unbounded(previous)
        hits_prev = prev_cf.token_hits.astype(np.int64)[perm]
        hc, hp = row_content_hashes(current), row_content_hashes(previous)
        for a, b in _trace_chunks(current, CHUNK_IDS):
            _compare_chunk(current, previous, perm, hc, hp, (hits_cur, hits_prev), a, b, acc)
    tokens_changed = (acc.full_changed > 0) | acc.rest_changed
    cache_changed = (hits_cur != hits_prev) if previous is not None else np.zeros(m, bool)

    def rates(result: ReplayResult | None, role: str | None) -> float | None:
        if result is None:
            return None
        return (result.per_role[role] if role else result).token_replay_hit_rate

    def role_figures(mask: np.ndarray, role: str | None) -> dict:
        now, before = rates(cur_result, role), rates(prev_result, role)
        return {
            "calls": int(mask.sum()),
            "calls_tokens_changed": int(tokens_changed[mask].sum()),
            "full_blocks_changed": int(acc.full_changed[mask].sum()),
            "distinct_blocks_changed": acc.distinct[role or "all"],
            "calls_cache_changed": int(cache_changed[mask].sum()),
            "token_replay_hit_rate": now,
            "previous_token_replay_hit_rate": before,
            "hit_rate_change": None if now is None or before is None else now - before,
        }

    def count(codes: np.ndarray, mask: np.ndarray) -> dict[str, int]:
        return {name: int(((codes == k) & mask).sum()) for k, name in enumerate(CAUSES)}

    roles = {role: current.role_mask(role) for role in ROLES}
    table = []
    for role, mask in roles.items():
        for k, name in enumerate(CAUSES):
            cache_rows = mask & (acc.cache_cause == k)
            table.append(
                {
                    "role": role,
                    "cause": name,
                    "calls_tokens_changed": int((mask & (acc.token_cause == k)).sum()),
                    "calls_cache_changed": int(cache_rows.sum()),
                    "hit_blocks_change": int((hits_cur - hits_prev)[cache_rows].sum()),
                }
            )
    everything = np.ones(m, dtype=bool)
    manifest_prev = previous.manifest if previous is not None else {}
    summary = BlastRadius(
        **role_figures(everything, None),
        current_key=str(current.manifest.get("decode_key") or _name(current)),
        previous_key=(
            str(manifest_prev.get("decode_key") or _name(previous))
            if previous is not None
            else None
        ),
        current_manifest_version=current.manifest.get("manifest_version"),
        previous_manifest_version=manifest_prev.get("manifest_version"),
        per_role={role: RoleBlast(**role_figures(mask, role)) for role, mask in roles.items()},
        by_cause=count(acc.cache_cause, everything),
        tokens_changed_by_cause=count(acc.token_cause, everything),
        table=table,
    )
    arrays = {
        "tokens_changed": tokens_changed,
        "cache_changed": cache_changed,
        "hits_current": hits_cur,
        "hits_previous": hits_prev,
        "full_blocks_changed": acc.full_changed,
        "cause": acc.cache_cause,
        "token_cause": acc.token_cause,
    }
    return summary, arrays


def _name(ds: DecodedDataset) -> str:
    return ds.path.name if ds.path else "in-memory"


ROLES_SHOWN = ("all", "parent", "subagent")


# every label has a bounded size (counts in engineering units, rates 0.0-1.0, fixed texts): the
# margins tight_layout chose for the benchmark's figure
PLOT_MARGINS = {"left": 0.1, "right": 0.98, "bottom": 0.13, "top": 0.895, "wspace": 0.3}


def blast_radius_png(br: BlastRadius) -> bytes:
    """`blast_radius_figure` as a small PNG."""
    return figure_png(blast_radius_figure(br), PLOT_MARGINS)


def blast_radius_figure(br: BlastRadius):
    """Two panels: calls whose tokens / cache hits changed per role, and the token-replay hit
    rate per role before and after the change."""
    roles = [("all", br)] + [(r, br.per_role[r]) for r in ROLES_SHOWN[1:] if r in br.per_role]
    names = [name for name, _ in roles]
    x = range(len(roles))
    fig, (left, right) = new_figure(7.2, 3.2, ncols=2)
    w = 0.38
    for k, (field, label) in enumerate(
        (
            ("calls_tokens_changed", "tokens changed"),
            ("calls_cache_changed", "cache hits changed"),
        )
    ):
        values = [getattr(f, field) for _, f in roles]
        bars = left.bar([i + (k - 0.5) * w for i in x], values, w, label=label, color=f"C{k + 3}")
        left.bar_label(bars, fontsize=7)
    left.set_xticks(list(x), names)
    count_labels(left.yaxis)
    left.set_ylabel("calls")
    left.set_title(f"changed calls (of {br.calls})", fontsize=9)
    left.legend(fontsize=7)
    left.set_ylim(0, max([1] + [r.calls for _, r in roles]) * 1.1)

    before = [f.previous_token_replay_hit_rate for _, f in roles]
    after = [f.token_replay_hit_rate for _, f in roles]
    if any(v is not None for v in before):
        right.bar(
            [i - w / 2 for i in x],
            [v or 0 for v in before],
            w,
            label=f"manifest v{br.previous_manifest_version}",
            color="C7",
        )
    right.bar(
        [i + w / 2 for i in x],
        [v or 0 for v in after],
        w,
        label=f"manifest v{br.current_manifest_version}",
        color="C0",
    )
    right.set_xticks(list(x), names)
    right.set_ylim(0, 1.05)
    right.set_ylabel("token-replay hit rate")
    right.set_title(
        "no earlier dataset" if br.previous_key is None else "hit rate before / after",
        fontsize=9,
    )
    right.legend(fontsize=7, loc="lower right")
    return fig
