"""A small Bailian corpus written by the tests, with the figures it must give, computed here
without the project's code.

Sessions share a two-block system prompt; each turn's prompt is the session's history (its
earlier full blocks) plus one to three new blocks and a partial block whose id is never
reused. Ids are minted file-wide in first-appearance order of their prefix chain (Bailian's
salted hashes remapped to sequential integers), so the same prefix has the same id in every
session. Sessions interleave in the file; chat ids are shuffled, so nothing but the
parent links tells which lines form a session."""

import json
import random
from pathlib import Path

BLOCK = 16


def bailian_requests(
    sessions: int = 6, turns: tuple[int, int] = (1, 5), seed: int = 0, start_s: float = 10.0
) -> list[dict]:
    """The requests in file order (each session's turns in order, sessions interleaved)."""
    rng = random.Random(seed)
    lengths = [rng.randint(*turns) for _ in range(sessions)]
    chat_ids = rng.sample(range(1_000, 1_000 + 10 * sum(lengths)), sum(lengths))
    minted: dict[tuple, int] = {}
    history = [[("sys", 0), ("sys", 1)] for _ in range(sessions)]
    done = [0] * sessions
    last_chat = [-1] * sessions
    out, t = [], start_s
    while any(d < n for d, n in zip(done, lengths, strict=True)):
        s = rng.choice([k for k in range(sessions) if done[k] < lengths[k]])
        i = len(out)
        history[s] = history[s] + [(s, i, j) for j in range(rng.randint(1, 3))]
        blocks = history[s] + [("partial", i)]
        ids = [minted.setdefault(tuple(blocks[: k + 1]), len(minted)) for k in range(len(blocks))]
        t = round(t + rng.uniform(0.0, 2.5), 3)
        chat = chat_ids.pop()
        out.append(
            {
                "chat_id": chat,
                "parent_chat_id": last_chat[s],
                "timestamp": t,
                "input_length": (len(blocks) - 1) * BLOCK + rng.randint(1, BLOCK - 1),
                "output_length": rng.randint(1, 40),
                "type": "text",
                "turn": done[s] + 1,
                "hash_ids": ids,
            }
        )
        last_chat[s], done[s] = chat, done[s] + 1
    return out


def write_bailian(path: Path, requests: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def sessions_of(requests: list[dict]) -> dict[int, list[int]]:
    """{root chat_id: indices of its requests in turn order}, by walking the parent links."""
    by_chat = {r["chat_id"]: i for i, r in enumerate(requests)}
    out: dict[int, list[int]] = {}
    for i in range(len(requests)):
        j = i
        while requests[j]["parent_chat_id"] != -1:
            j = by_chat[requests[j]["parent_chat_id"]]
        out.setdefault(requests[j]["chat_id"], []).append(i)
    return {root: sorted(ix, key=lambda i: (requests[i]["turn"], i)) for root, ix in out.items()}


def _leading(ids: list[int], seen: set[int]) -> int:
    run = 0
    while run < len(ids) and ids[run] in seen:
        run += 1
    return run


def expected_figures(requests: list[dict], block: int = BLOCK) -> dict:
    """Per session (a seen-set per session, its requests in turn order: the per-trace
    figures) and corpus-wide (one seen-set, requests by timestamp, file order on ties), for
    all ids and for full blocks only; and aiperf's figure (the mean over requests of the
    leading run over len(hash_ids), one seen-set, same order)."""
    per_session = {}
    hits = total = full_hits = full_total = 0
    for root, ix in sessions_of(requests).items():
        seen: set[int] = set()
        seen_full: set[int] = set()
        h = n = 0
        for i in ix:
            r = requests[i]
            ids, full = r["hash_ids"], r["hash_ids"][: r["input_length"] // block]
            run = _leading(ids, seen)
            h, n = h + run, n + len(ids)
            full_hits += _leading(full, seen_full)
            full_total += len(full)
            seen.update(ids)
            seen_full.update(full)
        per_session[root] = (h, n)
        hits, total = hits + h, total + n
    order = sorted(range(len(requests)), key=lambda i: (requests[i]["timestamp"], i))
    seen, wide, rates = set(), 0, []
    for i in order:
        ids = requests[i]["hash_ids"]
        run = _leading(ids, seen)
        wide += run
        if ids:
            rates.append(run / len(ids))
        seen.update(ids)
    return {
        "per_session": per_session,
        "hits": hits,
        "blocks": total,
        "full_hits": full_hits,
        "full_blocks": full_total,
        "corpus_wide_hits": wide,
        "corpus_wide_rate": wide / total,
        "aiperf_rate": sum(rates) / len(rates),
    }
