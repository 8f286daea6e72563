"""The corpus registry: a YAML file listing the corpora (one partition each).

```yaml
corpora:
  - name: sample                 # partition key: ^[a-z0-9][a-z0-9._-]{0,63}$
    source: builtin:sample       # any source URI (see weka_assets.sources.uri)
    block_size: 64               # block size; optional, default 64 (the format's: 512 for
                                 # mooncake, 16 for bailian)
    format: mooncake             # weka | mooncake | bailian (traces.formats); default: detected
    tokenizers: [deepseek]       # optional, default [deepseek]
    scope_policy: fail           # fail | exclude, default fail
```

Every problem is one `RegistryError` line naming the file, the entry (1-based index and name)
and the field, e.g. `corpora.yaml: entry 2 ('foo'): source: unsupported scheme 'ftp' ...`;
malformed YAML names the file and line.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from weka_assets.sources.errors import RegistryError, SourceURIError
from weka_assets.sources.uri import SourceSpec, parse_source
from weka_assets.traces import formats
from weka_assets.traces.reader import CorpusFormat

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,63}$"
REGISTRY_FILENAME = "corpora.yaml"


class CorpusSizing(BaseModel):
    """The hardware a team sizes this corpus's KV cache for (the capacity asset's tiers and
    fleet); a field left out falls back to the `ReplayOptions` resource."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kv_model: str | None = None  # a KV_PRESETS name, a model folder or config.json, a hub id
    kv_model_revision: str | None = None  # the pinned commit of a hub id
    tiers: str | None = None  # e.g. "gpu=80GiB,host=1TiB,storage=50TiB", fastest first
    replicas: PositiveInt | None = None
    routing: Literal["round_robin", "session", "prefix"] | None = None


class CorpusEntry(BaseModel):
    """One corpus of the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NAME_RE)]
    source: str
    block_size: PositiveInt = 64
    tokenizers: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["deepseek"], min_length=1
    )
    scope_policy: Literal["fail", "exclude"] = "fail"
    # a registered trace format (traces.formats); None: detected from the corpus's first
    # record (traces.reader.detect_format)
    format: str | None = None
    sizing: CorpusSizing | None = None

    @model_validator(mode="before")
    @classmethod
    def _format_block_size(cls, data):
        """A format whose lines state no block size has its default (Mooncake's 512,
        Bailian's 16)."""
        if isinstance(data, dict) and "block_size" not in data:
            fmt = formats.find(data.get("format"))  # an unknown one fails below
            if fmt is not None and fmt.default_block_size is not None:
                return {**data, "block_size": fmt.default_block_size}
        return data

    @field_validator("format")
    @classmethod
    def _format_known(cls, value: str | None) -> str | None:
        if value is not None and formats.find(value) is None:
            raise ValueError(f"unknown trace format {value!r} ({formats.names_text()})")
        return value

    @field_validator("source")
    @classmethod
    def _source_parses(cls, value: str) -> str:
        try:
            parse_source(value)
        except SourceURIError as exc:
            raise ValueError(exc.reason) from None
        return value

    @field_validator("tokenizers")
    @classmethod
    def _tokenizers_unique(cls, value: list[str]) -> list[str]:
        dupes = sorted({t for t in value if value.count(t) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")
        return value

    @property
    def spec(self) -> SourceSpec:
        return parse_source(self.source)

    def corpus_format(self) -> CorpusFormat:
        """How the corpus is read. `block_size` is the block size of a format whose traces do
        not state one: given, or the format's default (also for a detected format); Weka
        traces state their own."""
        named = formats.find(self.format)
        given = (
            named is not None and named.default_block_size is not None
        ) or "block_size" in self.model_fields_set
        origin = " (registry format)" if self.format else ""
        return CorpusFormat(self.format, self.block_size if given else None, origin)


class Registry(BaseModel):
    """The corpora, in file order, with unique names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    corpora: list[CorpusEntry] = Field(default_factory=list)

    @field_validator("corpora")
    @classmethod
    def _unique_names(cls, value: list[CorpusEntry]) -> list[CorpusEntry]:
        seen: dict[str, int] = {}
        for i, entry in enumerate(value, start=1):
            if entry.name in seen:
                raise ValueError(
                    f"entry {i} ({entry.name!r}): name: duplicate of entry {seen[entry.name]}"
                )
            seen[entry.name] = i
        return value

    def names(self) -> list[str]:
        return [e.name for e in self.corpora]

    def get(self, name: str) -> CorpusEntry:
        for e in self.corpora:
            if e.name == name:
                return e
        raise KeyError(name)

    def __iter__(self) -> Iterator[CorpusEntry]:  # type: ignore[override]
        return iter(self.corpora)

    def __len__(self) -> int:
        return len(self.corpora)

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self.corpora)


def default_registry_path() -> Path:
    """The repository's `corpora.yaml` (beside pyproject.toml)."""
    return Path(__file__).resolve().parents[2] / REGISTRY_FILENAME


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(file: str, exc: yaml.YAMLError) -> RegistryError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{file}:{mark.line + 1}" if mark is not None else file
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    cmark = getattr(exc, "context_mark", None)
    if context and cmark is not None and (mark is None or cmark.line != mark.line):
        context = f"{context} at line {cmark.line + 1}"
    text = f"{context}: {problem}" if context else problem
    return RegistryError(f"{where}: invalid YAML: {' '.join(str(text).split())}")


def _entry_label(raw, index: int) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"entry {index} ({name!r})" if isinstance(name, str) else f"entry {index}"


def _describe(file: str, raw: dict, exc: ValidationError) -> RegistryError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = list(first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if loc[:1] == ["corpora"] and len(loc) >= 2 and isinstance(loc[1], int):
        index = loc[1] + 1
        entry = raw["corpora"][loc[1]]
        label = _entry_label(entry, index)
        if first["type"] == "model_type" or len(loc) == 2:
            return RegistryError(f"{file}: {label}: expected a mapping with name and source{more}")
        field = ".".join(str(p + 1) if isinstance(p, int) else str(p) for p in loc[2:])
        if first["type"] == "extra_forbidden":
            msg = f"unknown field (allowed: {', '.join(CorpusEntry.model_fields)})"
        elif first["type"] == "missing":
            msg = "required"
        elif first["type"] == "string_pattern_mismatch":
            msg = f"must match {NAME_RE}"
        return RegistryError(f"{file}: {label}: {field}: {msg}{more}")
    if loc == ["corpora"] and msg.startswith("entry "):
        return RegistryError(f"{file}: {msg}{more}")
    field = ".".join(str(p) for p in loc) or "top level"
    if first["type"] == "extra_forbidden":
        msg = "unknown top-level key (the file holds one key, corpora)"
    return RegistryError(f"{file}: {field}: {msg}{more}")


def parse_registry(text: str, file: str = REGISTRY_FILENAME) -> Registry:
    """Parse registry YAML text; `file` names it in error messages."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(file, exc) from None
    if raw is None:
        raw = {"corpora": []}
    if not isinstance(raw, dict) or "corpora" not in raw:
        raise RegistryError(f"{file}: expected a mapping with a 'corpora' list")
    if not isinstance(raw["corpora"], list):
        raise RegistryError(f"{file}: corpora: expected a list of entries")
    try:
        return Registry.model_validate(raw)
    except ValidationError as exc:
        raise _describe(file, raw, exc) from None


def load_registry(path: Path | str | None = None) -> Registry:
    """Load and validate a registry file (default: `default_registry_path()`)."""
    path = Path(path) if path is not None else default_registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{path}: no such registry file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read: {exc}") from None
    return parse_registry(text, str(path))


def is_valid_name(name: str) -> bool:
    """True for a usable corpus name (partition key)."""
    return re.match(NAME_RE, name) is not None
