"""Where every asset keeps its data: one base location, a local folder or `s3://bucket/prefix`.

Everything below the base is content-addressed (`raw/<digest>/`, `datasets/<decode key>/`, ...),
so a local working copy can be cached freely. The chain's functions work on local paths
(datasets are memory-mapped); for a remote base, `pull` brings a subpath into a local cache
and `push` publishes a finished local subpath, its `manifest.json` (when it has one) last, so
a reader that checks for the manifest never sees half a dataset.

Store-relative keys are built only from validated names and hex digests; `key()` refuses
anything that could leave the base (absolute paths, `..`, empty parts).
"""

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from weka_assets.errors import WekaError

MANIFEST = "manifest.json"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


class StoreError(WekaError):
    """The store cannot be read or written (bad base path, missing object, refused key)."""


def key(*parts: str) -> str:
    """A store-relative key; raises StoreError for anything that could escape the base."""
    out = []
    for part in parts:
        for piece in str(part).split("/"):
            if piece in ("", ".", "..") or "\\" in piece or "\0" in piece:
                raise StoreError(f"refusing store key {'/'.join(map(str, parts))!r}")
            out.append(piece)
    return "/".join(out)


def _is_piece(name: str) -> bool:
    """True for a name that is one safe key segment (a child of a store folder)."""
    try:
        return "/" not in name and key(name) == name
    except StoreError:
        return False


def _check_s3_base(base: str) -> None:
    """An S3 base must name a valid bucket and a prefix of safe segments (no '', '.', '..')."""
    bucket, _, prefix = base.removeprefix("s3://").partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StoreError(f"unsupported store {base!r}: invalid bucket name {bucket!r}")
    if prefix:
        try:
            key(prefix)
        except StoreError:
            raise StoreError(
                f"unsupported store {base!r}: the prefix has an empty, '.' or '..' segment"
            ) from None


def s3_options_from_env() -> dict:
    """s3fs options from the standard AWS variables (endpoint, region, credentials)."""
    opts: dict = {}
    if os.environ.get("AWS_ENDPOINT_URL"):
        opts["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if os.environ.get("AWS_DEFAULT_REGION"):
        opts["client_kwargs"] = {"region_name": os.environ["AWS_DEFAULT_REGION"]}
    return opts


class Store:
    """A base location with local working copies. `root` is local for a local base."""

    def __init__(
        self, base: str, cache_dir: str | Path | None = None, s3_options: dict | None = None
    ):
        self.base = base.rstrip("/")
        self.remote = self.base.startswith("s3://")
        if self.remote:
            import s3fs

            _check_s3_base(self.base)
            self.fs = s3fs.S3FileSystem(
                skip_instance_cache=True, **(s3_options or s3_options_from_env())
            )
            tag = hashlib.sha256(self.base.encode()).hexdigest()[:16]
            default_cache = Path(
                os.environ.get("WEKA_ASSETS_CACHE") or Path.home() / ".cache" / "weka-assets"
            )
            self.root = Path(cache_dir or default_cache / "store" / tag).resolve()
        elif "://" in self.base and not self.base.startswith("file://"):
            raise StoreError(
                f"unsupported store {base!r}: use a local folder or s3://bucket/prefix"
            )
        else:
            self.fs = None
            self.root = Path(self.base.removeprefix("file://")).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({self.base!r})"

    # ---- addressing ------------------------------------------------------------------------
    def local(self, subpath: str) -> Path:
        """The local working path of a store key (the data itself for a local store)."""
        return self.root / key(subpath)

    def url(self, subpath: str) -> str:
        return f"{self.base}/{key(subpath)}" if self.remote else str(self.local(subpath))

    def dir(self, subpath: str) -> Path:
        path = self.local(subpath)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path | str) -> str:
        """The store key of a local working path under `root`."""
        try:
            return PurePosixPath(Path(path).resolve().relative_to(self.root)).as_posix()
        except ValueError:
            raise StoreError(
                f"{path} is not inside the store's working folder {self.root}"
            ) from None

    # ---- remote ----------------------------------------------------------------------------
    def exists(self, subpath: str) -> bool:
        if not self.remote:
            return self.local(subpath).exists()
        return bool(self.fs.exists(self.url(subpath)))

    def pull(self, subpath: str) -> Path:
        """Make a store key available locally (a file or a folder) and return its local path.

        Every object of a remote folder is fetched to the local path its key names, and each
        key must be a safe store key: an object such as `PREFIX/../../x` (or with an empty or
        '.' segment) fails the pull with a `StoreError` instead of being written elsewhere."""
        local = self.local(subpath)
        if not self.remote or local.exists():
            if not local.exists():
                raise StoreError(f"{self.url(subpath)}: not in the store")
            return local
        remote = self.url(subpath)
        if not self.fs.exists(remote):
            raise StoreError(f"{remote}: not in the store")
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".pull-{local.name}-", dir=local.parent))
        try:
            if self.fs.isdir(remote):
                (tmp / local.name).mkdir()
                # one object at a time, to the path its checked key names (no glob expansion)
                for obj, dest in self._folder_objects(remote, tmp / local.name):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.fs.get_file(obj, str(dest))
            else:
                self.fs.get_file(remote, str(tmp / local.name))
            try:
                os.rename(tmp / local.name, local)
            except OSError:
                if not local.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local

    def _folder_objects(self, remote: str, dest: Path) -> list[tuple[str, Path]]:
        """(object path, local file) for every object under the remote folder `remote`;
        refuses (StoreError) any object whose key below the folder is not a safe store key."""
        folder = remote.removeprefix("s3://").rstrip("/") + "/"
        pairs = []
        for obj in sorted(self.fs.find(remote)):
            obj = obj.removeprefix("s3://")
            if not obj.startswith(folder) or obj.endswith("/"):
                continue  # outside the folder, or a folder marker (no data)
            rel = obj[len(folder) :]
            try:
                rel = key(rel)
            except StoreError:
                raise StoreError(
                    f"{remote}: refusing to pull object {rel!r}: its key has an empty, '.' or "
                    "'..' segment (it could be written outside the store's working folder)"
                ) from None
            pairs.append((obj, dest.joinpath(*rel.split("/"))))
        return pairs

    def push(self, subpath: str) -> str:
        """Publish a local file or folder at its key; a folder's manifest.json goes last."""
        local = self.local(subpath)
        if not self.remote:
            return str(local)
        remote = self.url(subpath)
        if local.is_dir():
            files = sorted(p for p in local.rglob("*") if p.is_file())
            files.sort(key=lambda p: p.name == MANIFEST)
            for f in files:
                self.fs.put_file(str(f), f"{remote}/{f.relative_to(local).as_posix()}")
        else:
            self.fs.put_file(str(local), remote)
        return remote

    def write_bytes(self, subpath: str, data: bytes) -> str:
        """Write one small object (atomically on local disk; S3 puts are atomic)."""
        local = self.local(subpath)
        local.parent.mkdir(parents=True, exist_ok=True)
        # a name aside of its own: concurrent writers of one key never share a file
        tmp = local.with_name(f".{local.name}.{os.getpid()}-{os.urandom(6).hex()}.tmp")
        try:
            tmp.write_bytes(data)
            tmp.replace(local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.push(subpath)

    def read_bytes(self, subpath: str) -> bytes:
        if not self.remote:
            return self.local(subpath).read_bytes()
        try:
            return self.fs.cat_file(self.url(subpath))
        except FileNotFoundError:
            raise StoreError(f"{self.url(subpath)}: not in the store") from None

    def manifests(self, prefix: str) -> dict[str, dict]:
        """`{child name: manifest}` of every child of `prefix` that has a readable manifest.json."""
        import orjson

        out: dict[str, dict] = {}
        if self.remote:
            for path in self.fs.glob(f"{self.url(prefix)}/*/{MANIFEST}"):
                name = path.rstrip("/").split("/")[-2]
                if not _is_piece(name):
                    continue
                try:
                    out[name] = orjson.loads(self.fs.cat_file(path))
                except (OSError, ValueError):
                    continue
            return out
        base = self.local(prefix)
        for child in sorted(base.iterdir()) if base.is_dir() else []:
            if child.name.startswith(".") or not _is_piece(child.name):
                continue
            try:
                out[child.name] = orjson.loads((child / MANIFEST).read_bytes())
            except (OSError, ValueError):
                continue
        return out
