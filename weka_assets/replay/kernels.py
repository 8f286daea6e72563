"""Compiled loops (numba) of the policies that simulate one capacity at a time: vLLM's block pool
(`block_pool`) and Belady's OPT (`policies`). Each is the same algorithm as the readable Python
beside it, which the tests compare it with exactly; only arrays, no Python objects per block.

Keys come as dense ids (`dense_ids`): key-indexed state is then plain arrays. The functions
release the GIL, so a curve's capacities run on every core (`parallel.on_threads`). Compiled
once per machine (`cache=True`: numba keeps the machine code beside this file, or in
NUMBA_CACHE_DIR), about 2 s the first time.
"""

import numpy as np
from numba import njit

_JIT = dict(cache=True, nogil=True, boundscheck=False)


@njit(**_JIT)
def dense_ids(prev: np.ndarray) -> tuple:
    """(id of every position's key, number of distinct keys), ids in order of first use, from
    `capacity.previous_touch`."""
    ids = np.empty(prev.size, dtype=np.int64)
    n = 0
    for t in range(prev.size):
        p = prev[t]
        if p < 0:
            ids[t] = n
            n += 1
        else:
            ids[t] = ids[p]
    return ids, n


@njit(**_JIT)
def next_touches(prev):
    """Per position, the next position holding the same key, or -1 (from `previous_touch`)."""
    nxt = np.full(prev.size, -1, dtype=prev.dtype)
    for t in range(prev.size):
        if prev[t] >= 0:
            nxt[prev[t]] = t
    return nxt


@njit(**_JIT)
def leading_runs(flags, lengths):
    """Per call (`lengths`: its positions), how many leading positions have their flag set."""
    out = np.zeros(lengths.size, dtype=np.int64)
    a = 0
    for i in range(lengths.size):
        h = 0
        while h < lengths[i] and flags[a + h]:
            h += 1
        out[i] = h
        a += lengths[i]
    return out


# ---- vLLM's block pool ------------------------------------------------------------------------

# one row of four int32 per block (16 bytes): everything a step touches of a block in one
# cache line. REF: the calls holding it; KEY: the key it holds (-1: none); HNEXT: the next block
# holding the same key; POS: where it sits in the free FIFO (`fq`), -1 when it is not there.
REF, KEY, HNEXT, POS = 0, 1, 2, 3
_ROW = 4


@njit(**_JIT)
def _before(ta, ca, tb, cb):
    """Finish events in order of (time, call), as Python's heapq orders the tuples."""
    return ta < tb or (ta == tb and ca < cb)


# Helpers that take arrays are called once per allocation, never once per block: a compiled
# call with array arguments counts references on each array, and a call per block made the
# whole kernel 2.5-3.5x slower.


@njit(**_JIT)
def _hold_keys(blk, holders, blocks, at, keys, k_at, first_new, count):
    """Blocks `blocks[at:at + count]` now hold keys `keys[k_at:...]` (or, when `first_new`
    >= 0, the new keys `first_new`, `first_new + 1`, ...), each after the blocks that already
    hold it."""
    for j in range(count):
        b = blocks[at + j]
        k = keys[k_at + j] if first_new < 0 else first_new + j
        last = holders[k, 1]
        blk[b, KEY] = k
        blk[b, HNEXT] = -1
        if last >= 0:
            blk[last, HNEXT] = b
        else:
            holders[k, 0] = b
        holders[k, 1] = b


@njit(**_JIT)
def _take(blk, holders, fq, fq_head, stack, n_stack, top, out, at, count):
    """`count` blocks from the front of the free queue (keyless ones first) into
    `out[at:at + count]`, each with its key (if any) evicted (out of its key's holder list)
    and referenced once. Returns the queue's new front, the stack's new size and the highest
    block id taken so far."""
    for j in range(at, at + count):
        if n_stack > 0:
            n_stack -= 1
            b = stack[n_stack]
        else:
            while blk[fq[fq_head], POS] != fq_head:  # slots of blocks since taken out
                fq_head += 1
            b = fq[fq_head]
            fq_head += 1
            blk[b, POS] = -1
            if b > top:
                top = b
            k = blk[b, KEY]
            if k >= 0:
                hn = blk[b, HNEXT]
                if holders[k, 0] == b:
                    holders[k, 0] = hn
                    if hn < 0:
                        holders[k, 1] = -1
                else:  # a later holder: find the one before it (lists are a few long)
                    p = holders[k, 0]
                    while blk[p, HNEXT] != b:
                        p = blk[p, HNEXT]
                    blk[p, HNEXT] = hn
                    if hn < 0:
                        holders[k, 1] = p
                blk[b, KEY] = -1
        blk[b, REF] = 1
        out[j] = b
    return fq_head, n_stack, top


@njit(**_JIT)
def vllm_pool_hits(
    ids, n_keys, offsets, start_s, tokens_in, tokens_out, block_size, capacity,
    prefill_tps, decode_tps, max_num_seqs, ends,
):  # fmt: skip
    """`block_pool.vllm_reference_hits` with arrays. Returns (hits per call, the highest block
    id ever used): a pool of at least that many data blocks behaves alike. `ends`: each call's
    measured end (or when admitted, if that is later), or empty for the service model's
    duration from its admission.

    vLLM's free queue is one list: blocks freed without a key are put at its front, blocks with
    a key at its back, a hit takes a block out of the middle, an allocation takes the front.
    Here it is two arrays in that order: a stack of the keyless blocks (the front), then a FIFO
    of the others whose removal from the middle is lazy: a block's POS says which FIFO slot
    holds it, so a slot whose block has moved on is skipped when it comes to the front. The
    FIFO is compacted when it reaches its end (it holds at most `capacity` live slots). Each
    key's holders form a list in the order they got it (a lookup takes the first, as vLLM's
    dict does): `holders[k]` = (first, last), HNEXT in the blocks' rows."""
    n_calls = offsets.size - 1
    hits = np.zeros(n_calls, dtype=np.int64)
    n = capacity + 1  # the null block is block 0
    blk = np.full((n, _ROW), -1, dtype=np.int32)
    fq = np.empty(2 * n + 64, dtype=np.int32)
    fq_head = 0
    fq_tail = 0
    for b in range(1, n):
        blk[b, REF] = 0
        fq[fq_tail] = b
        blk[b, POS] = fq_tail
        fq_tail += 1
    stack = np.empty(n, dtype=np.int32)
    n_stack = 0
    n_free = n - 1
    # generated blocks get keys of their own, after the prompt keys
    gen_total = 0
    for i in range(n_calls):
        total = tokens_in[i] + max(tokens_out[i], 1) - 1
        gen_total += max((total // block_size) - (tokens_in[i] // block_size), 0)
    holders = np.full((n_keys + gen_total, 2), -1, dtype=np.int32)  # first and last holder
    next_gen = n_keys
    # each call's blocks while it runs
    blk_off = np.zeros(n_calls + 1, dtype=np.int64)
    for i in range(n_calls):
        most = (tokens_in[i] + max(tokens_out[i], 1) - 1 + block_size - 1) // block_size
        blk_off[i + 1] = blk_off[i] + most
    call_blocks = np.empty(blk_off[n_calls], dtype=np.int32)
    call_len = np.zeros(n_calls, dtype=np.int64)
    # finish events: a binary min-heap of (time, call)
    ev_t = np.empty(n_calls, dtype=np.float64)
    ev_c = np.empty(n_calls, dtype=np.int64)
    n_ev = 0
    waiting = np.empty(n_calls, dtype=np.int64)
    w_head = 0
    w_tail = 0
    running = 0
    arrived = 0
    top = 0  # the highest block id taken from the free queue
    while arrived < n_calls or n_ev > 0:
        if n_ev > 0 and (arrived >= n_calls or ev_t[0] <= start_s[arrived]):
            now = ev_t[0]
            i = ev_c[0]
            n_ev -= 1  # pop the heap's root
            if n_ev > 0:
                t_last, c_last = ev_t[n_ev], ev_c[n_ev]
                j = 0
                while True:
                    a = 2 * j + 1
                    if a >= n_ev:
                        break
                    if a + 1 < n_ev and _before(ev_t[a + 1], ev_c[a + 1], ev_t[a], ev_c[a]):
                        a += 1
                    if _before(ev_t[a], ev_c[a], t_last, c_last):
                        ev_t[j], ev_c[j] = ev_t[a], ev_c[a]
                        j = a
                    else:
                        break
                ev_t[j], ev_c[j] = t_last, c_last
            # finish call i: its generated tokens' blocks, keyed, then freed in reverse
            nb = call_len[i]
            base = blk_off[i]
            total = tokens_in[i] + max(tokens_out[i], 1) - 1
            more = (total + block_size - 1) // block_size - nb
            if more > n_free:
                more = n_free
            more = max(more, 0)
            fq_head, n_stack, top = _take(
                blk, holders, fq, fq_head, stack, n_stack, top, call_blocks, base + nb, more
            )
            n_free -= more
            nb += more
            first = tokens_in[i] // block_size  # the generated tokens' full blocks
            count = max(min(total // block_size, nb) - first, 0)
            _hold_keys(blk, holders, call_blocks, base + first, ids, 0, next_gen, count)
            next_gen += count
            if fq_tail + nb > fq.size:  # compact the FIFO: its live slots to the start
                k = 0
                for j in range(fq_head, fq_tail):
                    b = fq[j]
                    if blk[b, POS] == j:
                        fq[k] = b
                        blk[b, POS] = k
                        k += 1
                fq_head = 0
                fq_tail = k
            # freed tail first: keyed blocks to the FIFO's back in that order; keyless ones
            # to the front, so that the block freed last is taken first
            keyless = 0
            for j in range(nb - 1, -1, -1):
                b = call_blocks[base + j]
                r = blk[b, REF] - 1
                blk[b, REF] = r
                if r == 0:
                    n_free += 1
                    if blk[b, KEY] >= 0:
                        fq[fq_tail] = b
                        blk[b, POS] = fq_tail
                        fq_tail += 1
                    else:
                        keyless += 1
            for j in range(nb if keyless else 0):  # pushed head first: the tail's on top
                b = call_blocks[base + j]
                if blk[b, REF] == 0 and blk[b, KEY] < 0:
                    stack[n_stack] = b
                    n_stack += 1
            running -= 1
        else:
            now = start_s[arrived]
            waiting[w_tail] = arrived
            w_tail += 1
            arrived += 1
        # admit waiting calls in arrival order while they fit
        while w_head < w_tail and running < max_num_seqs:
            i = waiting[w_head]
            a0 = offsets[i]
            length = offsets[i + 1] - a0
            n_in = tokens_in[i]
            cap = min(length, max(n_in - 1, 0) // block_size)
            base = blk_off[i]
            h = 0
            evictable = 0
            while h < cap:  # the hit blocks, kept in the call's row for the touch below
                b = holders[ids[a0 + h], 0]
                if b < 0:
                    break
                if blk[b, REF] == 0:
                    evictable += 1
                call_blocks[base + h] = b
                h += 1
            need = (n_in + block_size - 1) // block_size - h
            if need + evictable > n_free:
                if running > 0:
                    break  # the head of the line waits for blocks
                w_head += 1  # larger than the whole pool: never runs, caches nothing
                continue
            w_head += 1
            for j in range(h):  # touch the hit blocks: out of the free queue, pinned
                b = call_blocks[base + j]
                if blk[b, REF] == 0:
                    blk[b, POS] = -1
                    n_free -= 1
                blk[b, REF] += 1
            fq_head, n_stack, top = _take(
                blk, holders, fq, fq_head, stack, n_stack, top, call_blocks, base + h, need
            )
            n_free -= need
            call_len[i] = h + need
            count = max(min(n_in // block_size, length) - h, 0)
            _hold_keys(blk, holders, call_blocks, base + h, ids, a0 + h, -1, count)
            hits[i] = h
            running += 1
            # the duration first, then added: the same rounding as the readable model
            if ends.size:  # measured: it ends when it ended (or at once, if admitted late)
                done = max(now, ends[i])
            else:
                dur = (n_in - h * block_size) / prefill_tps + tokens_out[i] / decode_tps
                done = now + dur
            j = n_ev  # push (done, i)
            n_ev += 1
            while j > 0:
                parent = (j - 1) // 2
                if not _before(done, i, ev_t[parent], ev_c[parent]):
                    break
                ev_t[j], ev_c[j] = ev_t[parent], ev_c[parent]
                j = parent
            ev_t[j], ev_c[j] = done, i
    return hits, top


# ---- Belady's OPT -----------------------------------------------------------------------------


@njit(**_JIT)
def _sift_down(heap, hn, j):
    """Max-heap: move heap[j] down to its place."""
    x = heap[j]
    while True:
        a = 2 * j + 1
        if a >= hn:
            break
        if a + 1 < hn and heap[a + 1] > heap[a]:
            a += 1
        if heap[a] > x:
            heap[j] = heap[a]
            j = a
        else:
            break
    heap[j] = x


@njit(**_JIT)
def _push(heap, hn, v):
    j = hn
    while j > 0:
        parent = (j - 1) // 2
        if heap[parent] >= v:
            break
        heap[j] = heap[parent]
        j = parent
    heap[j] = v


@njit(**_JIT)
def _compact(heap, hn, now):
    """Drop the entries of accesses already past (the live ones are later than now), re-heap;
    the new count."""
    k = 0
    for j in range(hn):
        if heap[j] > now:
            heap[k] = heap[j]
            k += 1
    for j in range(k // 2 - 1, -1, -1):
        _sift_down(heap, k, j)
    return k


@njit(**_JIT)
def max_live(nxt, prev):
    """`policies._max_live`: the most keys live at once, a key live from an access with a next
    one to that next access."""
    live = 0
    most = 0
    for t in range(nxt.size):
        if prev[t] >= 0:
            live -= 1
        if nxt[t] >= 0:
            live += 1
            most = max(most, live)
    return most


@njit(**_JIT)
def opt_hit_flags(nxt, capacity):
    """`policies._opt_hit_flags`: per access, whether Belady's OPT of `capacity` keys hits it.
    A cached key is the position of its next access (`mark`); the heap is a max-heap of those
    positions with stale entries (of accesses already past) left behind until it fills, then
    dropped: a live entry is always later than now, so a stale one is never the farthest. An
    access neither hit nor used again changes nothing. `nxt` as int32 where positions fit:
    half the bytes to read at every capacity."""
    n = nxt.size
    mark = np.zeros(n, dtype=np.bool_)
    heap = np.empty(2 * capacity + 16, dtype=nxt.dtype)
    hn = 0
    size = 0
    for t in range(n):
        v = nxt[t]
        if mark[t]:  # a hit: the key's next use moves on to v
            if v >= 0:
                mark[v] = True
                if hn == heap.size:
                    hn = _compact(heap, hn, t)
                _push(heap, hn, v)
                hn += 1
            else:  # never used again: out of the cache
                size -= 1
        elif v >= 0:  # a miss of a key used again: insert it
            mark[v] = True
            if size < capacity:
                size += 1
                if hn == heap.size:
                    hn = _compact(heap, hn, t)
                _push(heap, hn, v)
                hn += 1
            elif heap[0] > v:  # full: evict the farthest next use
                mark[heap[0]] = False
                heap[0] = v
                _sift_down(heap, hn, 0)
            else:  # this key's next use is the farthest: it goes itself
                mark[v] = False
    return mark
