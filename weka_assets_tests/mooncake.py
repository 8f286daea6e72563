"""A small Mooncake corpus written by the tests, with the figures it must give.

Requests come from four sessions that share a two-block system prompt and grow by whole
blocks; ids are minted corpus-wide in first-appearance order of their prefix chain (as
Mooncake's prefix-chained hashes are), so the same prefix has the same ids on every line. Each
prompt ends in a partial block whose id is never reused."""

import json
import random
from pathlib import Path

BLOCK = 512


def mooncake_requests(n: int = 30, seed: int = 0, start_ms: int = 1_000) -> list[dict]:
    rng = random.Random(seed)
    minted: dict[tuple, int] = {}
    sessions = [[("sys", 0), ("sys", 1)] for _ in range(4)]
    out, t = [], start_ms
    for i in range(n):
        s = rng.randrange(4)
        sessions[s] = sessions[s] + [(s, i, j) for j in range(rng.randint(1, 3))]
        blocks = sessions[s] + [("partial", i)]
        ids = []
        for k in range(len(blocks)):
            ids.append(minted.setdefault(tuple(blocks[: k + 1]), len(minted)))
        t += rng.randint(0, 400)
        out.append(
            {
                "timestamp": t,
                "input_length": (len(blocks) - 1) * BLOCK + rng.randint(1, BLOCK - 1),
                "output_length": rng.randint(1, 40),
                "hash_ids": ids,
            }
        )
    return out


def write_mooncake(path: Path, requests: list[dict], blank_first: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in requests]
    path.write_text(("\n" if blank_first else "") + "\n".join(lines) + "\n")
    return path


def expected_hits(requests: list[dict], block: int = BLOCK) -> dict:
    """One unbounded cache for the whole corpus, requests in timestamp order (file order on
    ties): ids hit while they lead the prompt and appeared before (all ids, and full blocks
    only)."""
    order = sorted(range(len(requests)), key=lambda i: (requests[i]["timestamp"], i))
    seen_all: set[int] = set()
    seen_full: set[int] = set()
    hits = total = full_hits = full_total = 0
    for i in order:
        r = requests[i]
        ids = r["hash_ids"]
        full = ids[: r["input_length"] // block]
        run = 0
        while run < len(ids) and ids[run] in seen_all:
            run += 1
        hits, total = hits + run, total + len(ids)
        run = 0
        while run < len(full) and full[run] in seen_full:
            run += 1
        full_hits, full_total = full_hits + run, full_total + len(full)
        seen_all.update(ids)
        seen_full.update(full)
    return {
        "hits": hits,
        "blocks": total,
        "full_hits": full_hits,
        "full_blocks": full_total,
        "rate": hits / total,
        "full_rate": full_hits / full_total,
    }
