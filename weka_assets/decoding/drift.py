"""Re-tokenisation drift: how far `encode(decode(tokens))` is from the decoded tokens, what a
client that sends text instead of token ids would see (the server re-encodes the text).

One definition, one figure per dataset: measured when the dataset is decoded (stored in its
manifest as `retokenization_drift`) on the first trace's first `DRIFT_CALLS` calls, their
first `DRIFT_TOKENS` tokens each, with the tokenizer's own fast tokenizer. Everything else that reports drift (the
`decoded_dataset` metadata, the text export's sidecar) reads that figure (`dataset_drift`)
instead of measuring another sample.
"""

from pathlib import Path

import numpy as np

from weka_assets.decoding.dataset import DecodedDataset
from weka_assets.decoding.tokenizers import TokenizerSpec, load_tokenizer

DRIFT_CALLS = 4
DRIFT_TOKENS = 256
DEFINITION = (
    f"encode(decode(tokens)) against the tokens, on the first trace's first {DRIFT_CALLS} calls "
    f"(their first {DRIFT_TOKENS} tokens each), with the dataset's tokenizer: calls_identical "
    "of calls_checked; "
    "mismatch_fraction = (positions that differ + the length difference) / tokens_checked; "
    "token_count_delta_mean = the mean of len(re-encoded) - len(tokens)"
)


def codec(spec: TokenizerSpec):
    """(encode(text) -> ids, decode(ids) -> text) of a tokenizer: `tokenizer.json` through the
    `tokenizers` library (what transformers' fast tokenizers run), else transformers."""
    path = Path(spec.folder) / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        return (
            lambda text: tok.encode(text, add_special_tokens=False).ids,
            lambda ids: tok.decode(ids, skip_special_tokens=False),
        )
    tok = load_tokenizer(spec)
    return (lambda text: tok.encode(text, add_special_tokens=False), tok.decode)


def retokenization_drift(
    ds: DecodedDataset,
    spec: TokenizerSpec,
    calls: int = DRIFT_CALLS,
    max_tokens: int = DRIFT_TOKENS,
) -> dict:
    """The drift of `DEFINITION`, measured on the first calls of `ds` (at decode: its first
    trace alone)."""
    encode, decode = codec(spec)
    checked = identical = tokens = 0
    deltas, mismatched = [], 0
    for i in range(min(calls, ds.n_calls)):
        ids = ds.expand_call(i)[:max_tokens].tolist()
        if not ids:
            continue
        back = encode(decode(ids))
        checked += 1
        tokens += len(ids)
        identical += back == ids
        deltas.append(len(back) - len(ids))
        mismatched += sum(a != b for a, b in zip(ids, back, strict=False)) + abs(
            len(back) - len(ids)
        )
    return {
        "calls_checked": checked,
        "tokens_checked": tokens,
        "calls_identical": identical,
        "token_count_delta_mean": float(np.mean(deltas)) if deltas else 0.0,
        "mismatch_fraction": mismatched / tokens if tokens else 0.0,
    }


def dataset_drift(ds: DecodedDataset, spec: TokenizerSpec) -> dict:
    """The dataset's one drift figure: the one its manifest holds (measured at decode), else
    measured now by the same definition (a dataset decoded without the measurement)."""
    stored = ds.manifest.get("retokenization_drift")
    return dict(stored) if stored else retokenization_drift(ds.head(1), spec)
