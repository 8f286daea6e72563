"""The filler corpus: a fixed token array per tokenizer that every block is drawn from.

It is made by encoding a fixed text once, without special tokens. The default text is the
standard library's `pydoc_data.topics` (real English and code, no download). Its identity is
the sha256 of the little-endian int32 array; the array is cached on disk by (tokenizer, text)
so the tokenizer is loaded only the first time.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weka_assets import env
from weka_assets.atomic import atomic_write
from weka_assets.decoding.tokenizers import TokenizerSpec, load_tokenizer
from weka_assets.errors import DecodeError

MIN_FILLER_TOKENS = 4096


def default_text() -> str:
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def filler_text(path: str | None) -> str:
    if path is None:
        return default_text()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"filler text {path}: cannot read ({exc})") from None


@dataclass(frozen=True)
class Filler:
    tokens: np.ndarray  # int32, read-only
    sha256: str

    @property
    def size(self) -> int:
        return int(self.tokens.size)


def array_sha256(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest()


def build_filler(
    spec: TokenizerSpec, text_path: str | None = None, cache_dir: Path | None = None
) -> Filler:
    """The filler corpus of `spec`: read from `cache_dir`, else from the machine's shared cache
    ($WEKA_ASSETS_CACHE/filler or ~/.cache/weka-assets/filler), else tokenized (a few seconds:
    transformers' import and the encode) and stored in both."""
    text = filler_text(text_path)
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    name = f"{spec.files_sha256[:24]}-{text_hash[:24]}.npy"
    places = [Path(cache_dir) / name] if cache_dir is not None else []
    places.append(shared_cache() / "filler" / name)
    for place in places:
        if place.is_file():
            try:
                tokens = np.load(place)
            except (OSError, ValueError):
                continue  # unreadable: rebuilt below
            if tokens.dtype == np.int32 and tokens.ndim == 1 and tokens.size >= MIN_FILLER_TOKENS:
                for other in places:
                    if other != place and not other.is_file():
                        _save(other, tokens)
                tokens.setflags(write=False)
                return Filler(tokens, array_sha256(tokens))
    ids = load_tokenizer(spec).encode(text, add_special_tokens=False)
    tokens = np.asarray(ids, dtype=np.int32)
    if tokens.size < MIN_FILLER_TOKENS:
        raise DecodeError(
            f"filler text encodes to {tokens.size} tokens; need at least {MIN_FILLER_TOKENS}"
        )
    for place in places:
        _save(place, tokens)
    tokens.setflags(write=False)
    return Filler(tokens, array_sha256(tokens))


def shared_cache() -> Path:
    """This machine's cache: $WEKA_ASSETS_CACHE or ~/.cache/weka-assets."""
    return env.cache_dir()


def _save(path: Path, tokens: np.ndarray) -> None:
    """Write aside, then rename: a reader never sees half a file. A cache that cannot be
    written is skipped (read-only home)."""
    try:
        with atomic_write(path) as fh:
            np.save(fh, tokens)
    except OSError:
        pass
