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


# ---- vLLM's block pool ------------------------------------------------------------------------


@njit(**_JIT)
def _before(ta, ca, tb, cb):
    """Finish events in order of (time, call), as Python's heapq orders the tuples."""
    return ta < tb or (ta == tb and ca < cb)


@njit(**_JIT)
def _unlink(nxt, prv, b):
    nxt[prv[b]] = nxt[b]
    prv[nxt[b]] = prv[b]


@njit(**_JIT)
def _link_after(nxt, prv, where, b):
    nxt[b] = nxt[where]
    prv[b] = where
    prv[nxt[where]] = b
    nxt[where] = b


@njit(**_JIT)
def _drop_key(block_key, key_head, key_tail, h_next, h_prev, b):
    """Block `b` no longer holds its key (reused for new data)."""
    k = block_key[b]
    if h_prev[b] >= 0:
        h_next[h_prev[b]] = h_next[b]
    else:
        key_head[k] = h_next[b]
    if h_next[b] >= 0:
        h_prev[h_next[b]] = h_prev[b]
    else:
        key_tail[k] = h_prev[b]
    block_key[b] = -1


@njit(**_JIT)
def _hold_key(block_key, key_head, key_tail, h_next, h_prev, b, k):
    """Block `b` now holds key `k`, after the blocks that already hold it."""
    block_key[b] = k
    h_next[b] = -1
    h_prev[b] = key_tail[k]
    if key_tail[k] >= 0:
        h_next[key_tail[k]] = b
    else:
        key_head[k] = b
    key_tail[k] = b


@njit(**_JIT)
def vllm_pool_hits(
    ids, n_keys, offsets, start_s, tokens_in, tokens_out, block_size, capacity,
    prefill_tps, decode_tps, max_num_seqs,
):  # fmt: skip
    """`block_pool.vllm_reference_hits` with arrays: the free queue a doubly linked list over
    block ids (sentinels head = N, tail = N + 1), each key's holders a linked list in the order
    they got it (a lookup takes the first, as vLLM's dict does). Returns (hits per call, the
    highest block id ever used): a pool of at least that many data blocks behaves alike."""
    n_calls = offsets.size - 1
    hits = np.zeros(n_calls, dtype=np.int64)
    n = capacity + 1  # the null block is block 0
    head, tail = n, n + 1
    nxt = np.empty(n + 2, dtype=np.int64)
    prv = np.empty(n + 2, dtype=np.int64)
    nxt[head] = tail
    prv[tail] = head
    for b in range(1, n):
        _link_after(nxt, prv, prv[tail], b)
    n_free = n - 1
    ref = np.zeros(n, dtype=np.int64)
    block_key = np.full(n, -1, dtype=np.int64)
    h_next = np.full(n, -1, dtype=np.int64)
    h_prev = np.full(n, -1, dtype=np.int64)
    # generated blocks get keys of their own, after the prompt keys
    gen_total = 0
    for i in range(n_calls):
        total = tokens_in[i] + max(tokens_out[i], 1) - 1
        gen_total += max((total // block_size) - (tokens_in[i] // block_size), 0)
    key_head = np.full(n_keys + gen_total, -1, dtype=np.int64)
    key_tail = np.full(n_keys + gen_total, -1, dtype=np.int64)
    next_gen = n_keys
    # each call's blocks while it runs
    most = np.empty(n_calls, dtype=np.int64)
    for i in range(n_calls):
        most[i] = (tokens_in[i] + max(tokens_out[i], 1) - 1 + block_size - 1) // block_size
    blk_off = np.zeros(n_calls + 1, dtype=np.int64)
    for i in range(n_calls):
        blk_off[i + 1] = blk_off[i] + most[i]
    call_blocks = np.empty(blk_off[n_calls], dtype=np.int64)
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
    free_first = np.empty(n, dtype=np.int64)
    free_last = np.empty(n, dtype=np.int64)
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
            for _ in range(max(more, 0)):
                b = nxt[head]
                top = max(top, b)
                _unlink(nxt, prv, b)
                n_free -= 1
                if block_key[b] >= 0:
                    _drop_key(block_key, key_head, key_tail, h_next, h_prev, b)
                ref[b] = 1
                call_blocks[base + nb] = b
                nb += 1
            for j in range(tokens_in[i] // block_size, min(total // block_size, nb)):
                _hold_key(
                    block_key, key_head, key_tail, h_next, h_prev, call_blocks[base + j], next_gen
                )
                next_gen += 1
            nf = 0
            nl = 0
            for j in range(nb - 1, -1, -1):
                b = call_blocks[base + j]
                ref[b] -= 1
                if ref[b] == 0:
                    if block_key[b] >= 0:
                        free_last[nl] = b
                        nl += 1
                    else:
                        free_first[nf] = b
                        nf += 1
            for j in range(nf - 1, -1, -1):
                _link_after(nxt, prv, head, free_first[j])
            for j in range(nl):
                _link_after(nxt, prv, prv[tail], free_last[j])
            n_free += nf + nl
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
            h = 0
            while h < cap and key_head[ids[a0 + h]] >= 0:
                h += 1
            evictable = 0
            for j in range(h):
                if ref[key_head[ids[a0 + j]]] == 0:
                    evictable += 1
            need = (n_in + block_size - 1) // block_size - h
            if need + evictable > n_free:
                if running > 0:
                    break  # the head of the line waits for blocks
                w_head += 1  # larger than the whole pool: never runs, caches nothing
                continue
            w_head += 1
            base = blk_off[i]
            for j in range(h):  # touch the hit blocks
                b = key_head[ids[a0 + j]]
                if ref[b] == 0:
                    _unlink(nxt, prv, b)
                    n_free -= 1
                ref[b] += 1
                call_blocks[base + j] = b
            for j in range(need):
                b = nxt[head]
                top = max(top, b)
                _unlink(nxt, prv, b)
                n_free -= 1
                if block_key[b] >= 0:
                    _drop_key(block_key, key_head, key_tail, h_next, h_prev, b)
                ref[b] = 1
                call_blocks[base + h + j] = b
            call_len[i] = h + need
            for j in range(h, min(n_in // block_size, length)):
                _hold_key(
                    block_key,
                    key_head,
                    key_tail,
                    h_next,
                    h_prev,
                    call_blocks[base + j],
                    ids[a0 + j],
                )
            hits[i] = h
            running += 1
            # the duration first, then added: the same rounding as the readable model
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
def opt_hit_flags(nxt, prev, active, capacity):
    """`policies._opt_hit_flags`: per access, whether Belady's OPT of `capacity` keys hits it.
    A cached key is the position of its next access (`mark`); the heap is a max-heap of those
    positions with stale entries (of accesses already past) left behind until it fills, then
    dropped: a live entry is always later than now, so a stale one is never the farthest."""
    n = nxt.size
    mark = np.zeros(n, dtype=np.bool_)
    heap = np.empty(2 * capacity + 16, dtype=np.int64)
    hn = 0
    size = 0
    for a in range(active.size):
        t = active[a]
        v = nxt[t]
        if mark[t]:  # a hit: the key's next use moves on to v
            if v >= 0:
                mark[v] = True
                if hn == heap.size:  # compact: keep the live entries (later than now)
                    k = 0
                    for j in range(hn):
                        if heap[j] > t:
                            heap[k] = heap[j]
                            k += 1
                    hn = k
                    for j in range(hn // 2 - 1, -1, -1):
                        _sift_down(heap, hn, j)
                _push(heap, hn, v)
                hn += 1
            else:  # never used again: out of the cache
                size -= 1
        elif v >= 0:  # a miss of a key used again: insert it
            mark[v] = True
            if size < capacity:
                size += 1
                if hn == heap.size:
                    k = 0
                    for j in range(hn):
                        if heap[j] > t:
                            heap[k] = heap[j]
                            k += 1
                    hn = k
                    for j in range(hn // 2 - 1, -1, -1):
                        _sift_down(heap, hn, j)
                _push(heap, hn, v)
                hn += 1
            elif heap[0] > v:  # full: evict the farthest next use
                mark[heap[0]] = False
                heap[0] = v
                _sift_down(heap, hn, 0)
            else:  # this key's next use is the farthest: it goes itself
                mark[v] = False
    return mark
