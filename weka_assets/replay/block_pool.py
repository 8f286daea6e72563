"""vLLM's own eviction, block by block: the `vllm` capacity policy and the live replay's
prediction for a server whose KV cache fills.

A model of vLLM 0.32's v1 `BlockPool` with prefix caching (read in the installed package:
`vllm/v1/core/block_pool.py`, `kv_cache_manager.py`, `single_type_kv_cache_manager.py`,
`kv_cache_utils.py`; ../shared/docs/capacity.md), for a model with one attention type:

- `num_gpu_blocks` physical blocks of `block_size` tokens; block 0 is the null block, so
  `num_gpu_blocks - 1` hold data. At start every block is free, in id order.
- A request of `n` prompt tokens hits the leading run of its full-block keys that some block
  holds, at most `(n - 1) // B` blocks (the last token is always computed). Hit blocks are
  touched: a free one leaves the free queue; its reference count rises.
- New blocks come from the front of the free queue; a block still holding a key loses it then
  (`_maybe_evict_cached_block`). A request that needs more blocks than are free waits.
- Full blocks get their key once computed, prompt blocks and blocks of generated tokens alike
  (a generated block's key is unique here: no later prompt holds a server's own output). Two
  physical blocks may hold one key (vLLM does not de-duplicate: `BlockHashToBlockMap`); a
  lookup takes the first.
- A finished request has held `ceil((n + out - 1) / B)` blocks (the last sampled token has no
  KV). They are freed in reverse order: blocks with a key are appended to the back of the queue
  (the request's tail is evicted before its head), blocks without one (a partial last block)
  are put at the front (reused first). Blocks another running request holds stay pinned.

Prompt blocks are allocated when a request starts, the blocks of its generated tokens when it
finishes (in vLLM, step by step during decoding): one request at a time this is the same order
of allocations; with requests overlapping, vLLM interleaves decode allocations step by step.
"""

import heapq
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence

import numpy as np
from pydantic import BaseModel, Field


class BlockPool:
    """vLLM's block pool with prefix caching (see the module doc)."""

    def __init__(self, num_gpu_blocks: int, block_size: int):
        if int(num_gpu_blocks) < 2:
            raise ValueError(
                f"num_gpu_blocks must be >= 2 (one is the null block), got {num_gpu_blocks}"
            )
        if int(block_size) <= 0:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_gpu_blocks, self.block_size = int(num_gpu_blocks), int(block_size)
        # physical block ids 1 .. N-1; the front of the queue is reused first
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, self.num_gpu_blocks))
        self.ref = [0] * self.num_gpu_blocks
        self.key_of: dict[int, Hashable] = {}  # physical block -> the key it holds
        self.holders: dict[Hashable, dict[int, None]] = {}  # key -> blocks holding it, in order
        self.running: dict[Hashable, tuple[list[int], int]] = {}  # request -> (blocks, prompt)
        self.evicted = 0  # keys dropped from a block that was reused

    @property
    def usable_blocks(self) -> int:
        return self.num_gpu_blocks - 1

    def leading_hits(self, keys: Sequence[Hashable], prompt_tokens: int) -> int:
        """Blocks a request of these keys would hit now: the leading run held by some block,
        at most `(prompt_tokens - 1) // B`."""
        cap = min(len(keys), max(int(prompt_tokens) - 1, 0) // self.block_size)
        hits = 0
        while hits < cap and keys[hits] in self.holders:
            hits += 1
        return hits

    def start(self, request: Hashable, keys: Sequence[Hashable], prompt_tokens: int) -> int | None:
        """Schedule a request: hit blocks touched, prompt blocks allocated and keyed. Returns the
        hit blocks, or None (nothing changed) when the free blocks do not suffice: it waits."""
        if request in self.running:
            raise ValueError(f"request {request!r} is already running")
        n = int(prompt_tokens)
        hits = self.leading_hits(keys, n)
        hit_blocks = [next(iter(self.holders[k])) for k in keys[:hits]]
        need = -(-n // self.block_size) - hits
        evictable_hits = sum(1 for b in hit_blocks if self.ref[b] == 0)
        if need + evictable_hits > len(self.free):
            return None
        for b in hit_blocks:  # touch
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1
        new = self._allocate(need)
        blocks = hit_blocks + new
        full = n // self.block_size
        for j in range(hits, min(full, len(keys))):
            self._cache(blocks[j], keys[j])
        self.running[request] = (blocks, n)
        return hits

    def finish(self, request: Hashable, generated_tokens: int) -> None:
        """The request ends after `generated_tokens`: blocks of their KV allocated, full ones
        keyed (unique keys), then every block freed in reverse order."""
        blocks, n = self.running.pop(request)
        total = n + max(int(generated_tokens), 1) - 1  # tokens whose KV was computed
        more = max(-(-total // self.block_size) - len(blocks), 0)
        if more:
            if more > len(self.free):  # vLLM would preempt; here: what the pool still has
                more = len(self.free)
            blocks = blocks + self._allocate(more)
        for j in range(n // self.block_size, min(total // self.block_size, len(blocks))):
            self._cache(blocks[j], ("generated", request, j))
        first, last = [], []
        for b in reversed(blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                (last if b in self.key_of else first).append(b)
        for b in reversed(first):  # prepend_n keeps their order at the front
            self.free[b] = None
            self.free.move_to_end(b, last=False)
        for b in last:
            self.free[b] = None

    def _allocate(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            b, _ = self.free.popitem(last=False)
            key = self.key_of.pop(b, None)
            if key is not None:
                holders = self.holders[key]
                del holders[b]
                if not holders:
                    del self.holders[key]
                self.evicted += 1
            self.ref[b] = 1
            out.append(b)
        return out

    def _cache(self, block: int, key: Hashable) -> None:
        self.key_of[block] = key
        self.holders.setdefault(key, {})[block] = None


# ---- the `vllm` policy over a timeline ------------------------------------------------------


class ServiceModel(BaseModel):
    """How long a call runs when the `vllm` policy has no measured timings: prefill of the
    uncached prompt tokens, then decoding of the recorded output tokens, one call at most
    `max_num_seqs` at a time with the rest waiting in arrival order (vLLM's FCFS)."""

    prefill_tokens_per_s: float = Field(
        default=10_000.0, gt=0, description="prefill throughput of one call, uncached tokens/s"
    )
    decode_tokens_per_s: float = Field(
        default=50.0, gt=0, description="decoding speed of one call, output tokens/s"
    )
    max_num_seqs: int = Field(
        default=256, ge=1, description="calls running at once (vLLM's --max-num-seqs)"
    )

    def duration_s(self, uncached_tokens: int, output_tokens: int) -> float:
        return (
            uncached_tokens / self.prefill_tokens_per_s + output_tokens / self.decode_tokens_per_s
        )


def vllm_reference_hits(
    keys: np.ndarray,
    lengths: np.ndarray,
    start_s: np.ndarray,
    tokens_in: np.ndarray,
    tokens_out: np.ndarray,
    block_size: int,
    capacity: int | None,
    service: ServiceModel = ServiceModel(),
    ends: np.ndarray | None = None,
) -> np.ndarray:
    """`vllm_call_hits` by the readable model: `BlockPool` driven call by call (the reference
    the compiled kernel is tested against)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    tokens_in = np.asarray(tokens_in, dtype=np.int64)
    tokens_out = np.maximum(np.asarray(tokens_out, dtype=np.int64), 1)
    b = int(block_size)
    n_calls = lengths.size
    if capacity is None:
        capacity = int((-(-(tokens_in + tokens_out - 1) // b)).sum()) + 1
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0 blocks, got {capacity}")
    if capacity == 0:  # no call fits: nothing is ever cached
        return np.zeros(n_calls, dtype=np.int64)
    pool = BlockPool(int(capacity) + 1, b)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    hits = np.zeros(n_calls, dtype=np.int64)
    events: list[tuple[float, int, int]] = []  # (time, 0 = finish, call)
    waiting: deque[int] = deque()
    running = 0
    arrivals = np.asarray(start_s, dtype=np.float64)
    nxt = 0

    def admit(now: float) -> None:
        nonlocal running
        while waiting and running < service.max_num_seqs:
            i = waiting[0]
            call_keys = keys[offsets[i] : offsets[i + 1]].tolist()
            h = pool.start(i, call_keys, int(tokens_in[i]))
            if h is None:
                if running:
                    return  # head of line waits for blocks to be freed
                waiting.popleft()  # larger than the whole pool: never runs
                continue
            waiting.popleft()
            hits[i] = h
            running += 1
            if ends is not None:  # measured: it ends when it ended
                heapq.heappush(events, (max(now, float(ends[i])), i))
            else:  # modelled from its admission
                dur = service.duration_s(int(tokens_in[i]) - h * b, int(tokens_out[i]))
                heapq.heappush(events, (now + dur, i))

    while nxt < n_calls or events:
        if events and (nxt >= n_calls or events[0][0] <= arrivals[nxt]):
            now, i = heapq.heappop(events)
            pool.finish(i, int(tokens_out[i]))
            running -= 1
        else:
            now = float(arrivals[nxt])
            waiting.append(nxt)
            nxt += 1
        admit(now)
    return hits


def vllm_call_hits(
    keys: np.ndarray,
    lengths: np.ndarray,
    start_s: np.ndarray,
    tokens_in: np.ndarray,
    tokens_out: np.ndarray,
    block_size: int,
    capacity: int | None,
    service: ServiceModel = ServiceModel(),
    ends: np.ndarray | None = None,
) -> np.ndarray:
    """Hit blocks of every call (timeline order) on one vLLM server whose pool holds `capacity`
    data blocks (`capacity + 1` GPU blocks with the null block; None: never full).

    Calls arrive at `start_s`, wait in arrival order for a slot and free blocks, run for
    `service.duration_s` from their admission (or end at `ends[i]`, as a live run measured
    them, or when admitted if that is later) and free their blocks at the end. A call that needs more blocks than
    the whole pool could never run on such a server: it counts no hits and caches nothing.
    The compiled `kernels.vllm_pool_hits`, equal to `vllm_reference_hits` call by call.
    """
    return vllm_curve_hits(
        keys, lengths, start_s, tokens_in, tokens_out, block_size, [capacity], service,
        ends=ends,
    )[capacity]  # fmt: skip


def vllm_curve_hits(
    keys: np.ndarray,
    lengths: np.ndarray,
    start_s: np.ndarray,
    tokens_in: np.ndarray,
    tokens_out: np.ndarray,
    block_size: int,
    capacities: Sequence[int | None],
    service: ServiceModel = ServiceModel(),
    prev: np.ndarray | None = None,
    ends: np.ndarray | None = None,
) -> dict[int | None, np.ndarray]:
    """`vllm_call_hits` at every capacity, the capacities on every core. `prev`:
    `capacity.previous_touch(keys)` when the caller has it."""
    from weka_assets.parallel import on_threads, workers
    from weka_assets.replay.capacity import previous_touch
    from weka_assets.replay.kernels import dense_ids, vllm_pool_hits

    lengths = np.asarray(lengths, dtype=np.int64)
    tokens_in = np.asarray(tokens_in, dtype=np.int64)
    tokens_out = np.maximum(np.asarray(tokens_out, dtype=np.int64), 1)
    b = int(block_size)
    ids, n_keys = dense_ids(previous_touch(np.asarray(keys)) if prev is None else prev)
    # a pool that never fills: without eviction every block holds a prompt key (a recomputed
    # last block holds one twice: at most once per call), a generated key, or the partial last
    # block of a running call
    total = tokens_in + tokens_out - 1
    generated = int(np.maximum(total // b - tokens_in // b, 0).sum())
    unbounded = int(n_keys) + generated + 2 * int(lengths.size) + 1
    if unbounded >= 2**31 - 2:
        raise ValueError(f"{unbounded:,} blocks: beyond the compiled pool's 32-bit block ids")
    caps = {}
    for c in capacities:
        if c is not None and c < 0:
            raise ValueError(f"capacity must be >= 0 blocks, got {c}")
        caps[c] = unbounded if c is None else min(int(c), unbounded)  # larger: the same
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    start = np.ascontiguousarray(start_s, dtype=np.float64)
    given = np.ascontiguousarray(np.zeros(0) if ends is None else ends, dtype=np.float64)
    if given.size not in (0, lengths.size):
        raise ValueError(f"{given.size} end times for {lengths.size} calls")
    out: dict[int | None, np.ndarray] = {}

    def run(blocks: int) -> tuple[np.ndarray, int]:
        return vllm_pool_hits(
            ids, n_keys, offsets, start, tokens_in, tokens_out, b, blocks,
            float(service.prefill_tokens_per_s), float(service.decode_tokens_per_s),
            int(service.max_num_seqs), given,
        )  # fmt: skip

    # the largest pool first: no block with an id above its `top` was ever taken, so every
    # block in use was among blocks 1..top, and a pool of c >= top data blocks admits the same
    # calls and takes the same blocks in the same order: the same hits, without a run of its
    # own. Meanwhile the other threads run the smallest pools, the least likely to reach `top`;
    # the first thread then takes the largest left, skipping those at or above `top`.
    sizes = sorted({v for v in caps.values() if v > 0})
    largest = sizes.pop() if sizes else 0
    left = deque(sizes)
    lock = threading.Lock()
    runs: dict[int, np.ndarray] = {}
    found = {"top": None}

    def worker(w: int) -> None:
        if w == 0 and largest:
            runs[largest], found["top"] = run(largest)
        while True:
            with lock:
                if not left:
                    return
                size = left.pop() if w == 0 else left.popleft()
                if found["top"] is not None and size >= found["top"]:
                    continue
            runs[size] = run(size)[0]

    on_threads(worker, range(max(workers(), 1)))
    for c, size in caps.items():
        if size == 0:  # no call fits: nothing is ever cached
            out[c] = np.zeros(lengths.size, dtype=np.int64)
        else:
            out[c] = runs[size].copy() if size in runs else runs[largest].copy()
    return {c: out[c] for c in caps}
