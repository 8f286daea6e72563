"""Where every asset keeps its data: one base location, a local folder or `s3://bucket/prefix`.

Everything below the base is content-addressed (`raw/<digest>/`, `datasets/<decode key>/`, ...),
so a local working copy can be cached freely. The chain's functions work on local paths
(datasets are memory-mapped); for a remote base, `pull` brings a subpath into a local cache
and `push` publishes a finished local subpath, its `manifest.json` (when it has one) last, so
a reader that checks for the manifest never sees half a dataset.

Remote reads never trust a listing cached by this process: another machine may have published
since (s3fs's listings cache is off). A folder with a manifest is published exclusively
(`publish`): every object with a conditional write (`IfNoneMatch="*"`), the manifest last, so
of two machines publishing one key the first manifest wins and the other adopts it, where a
local lock (`key_lock`) could not reach the other machine.

Store-relative keys are built only from validated names and hex digests; `key()` refuses
anything that could leave the base (absolute paths, `..`, empty parts).
"""

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from weka_assets import env
from weka_assets.atomic import atomic_write
from weka_assets.errors import WekaError

MANIFEST = "manifest.json"
# Test hook: called as (store, subpath) when `publish` starts, before its first upload; tests
# set it to bring two writers (processes standing in for machines) to the same point. None in use.
PUBLISH_TEST_HOOK: Callable[["Store", str], None] | None = None
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
            # no listings cache: a long-lived process (a Celery worker) must see what another
            # machine published since its last listing, never a stale "not there"
            options = {**(s3_options or s3_options_from_env()), "use_listings_cache": False}
            self._s3 = s3fs.S3FileSystem(skip_instance_cache=True, **options)
            self._bucket_seen = False
            tag = hashlib.sha256(self.base.encode()).hexdigest()[:16]
            self.root = Path(cache_dir or env.cache_dir() / "store" / tag).resolve()
        elif "://" in self.base and not self.base.startswith("file://"):
            raise StoreError(
                f"unsupported store {base!r}: use a local folder or s3://bucket/prefix"
            )
        else:
            self.root = Path(self.base.removeprefix("file://")).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({self.base!r})"

    @property
    def fs(self):
        """The S3 file system (None for a local store), once its bucket is known to exist: a
        missing bucket is one `StoreError` naming it, at the first remote step, instead of a
        stack of botocore errors wherever the first call happens to be."""
        if not self.remote:
            return None
        if not self._bucket_seen:
            bucket = self.base.removeprefix("s3://").partition("/")[0]
            try:
                self._s3.info(bucket)
            except FileNotFoundError:
                raise StoreError(
                    f"store {self.base}: the S3 bucket {bucket!r} does not exist (create it "
                    "first; the store never creates buckets)"
                ) from None
            except PermissionError as exc:
                raise StoreError(
                    f"store {self.base}: no access to the S3 bucket {bucket!r} ({exc})"
                ) from None
            self._bucket_seen = True
        return self._s3

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
        self.fs.invalidate_cache()  # asked of S3 itself, never of an earlier listing
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
        self.fs.invalidate_cache()
        if not self.fs.exists(remote):
            raise StoreError(f"{remote}: not in the store")
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".pull-{local.name}-", dir=local.parent))
        try:
            if self.fs.isdir(remote):
                self._fetch_folder(remote, tmp / local.name)
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

    def _fetch_folder(self, remote: str, dest: Path) -> None:
        """Every object of the remote folder into the new local folder `dest`."""
        dest.mkdir()
        # one object at a time, to the path its checked key names (no glob expansion)
        for obj, path in self._folder_objects(remote, dest):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(obj, str(path))

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
        """Publish a local file or folder at its key. A folder with a manifest.json is published
        exclusively (`publish`: an existing dataset is never overwritten, the local copy then
        becomes it); anything else is overwritten."""
        local = self.local(subpath)
        if not self.remote:
            return str(local)
        remote = self.url(subpath)
        if local.is_dir() and (local / MANIFEST).is_file():
            self.publish(subpath)
        elif local.is_dir():
            for f in sorted(p for p in local.rglob("*") if p.is_file()):
                self.fs.put_file(str(f), f"{remote}/{f.relative_to(local).as_posix()}")
        else:
            self.fs.put_file(str(local), remote)
        return remote

    def publish(self, subpath: str) -> bool:
        """Publish the finished local folder `subpath` (its manifest.json written last) unless
        another writer's was there first. True: our manifest is the stored one (written now,
        or a damaged remote copy replaced). False: another writer published first; the local
        folder is then the stored one too (kept when its manifest has the same bytes, else
        moved aside and replaced by the winner's, pulled).

        Every object goes up with a conditional write (`IfNoneMatch="*"`), so nothing another
        writer stored is ever overwritten, except objects that no intact manifest vouches for:
        left by a writer that died before its manifest, or damaged (a reader's checksums
        caught them and the dataset was rebuilt)."""
        local = self.local(subpath)
        if not (local / MANIFEST).is_file():
            raise StoreError(f"{local}: no {MANIFEST}: not a finished folder to publish")
        if not self.remote:
            return True
        if PUBLISH_TEST_HOOK is not None:
            PUBLISH_TEST_HOOK(self, subpath)
        remote = self.url(subpath)
        manifest = f"{remote}/{MANIFEST}"
        data = sorted(p for p in local.rglob("*") if p.is_file() and p != local / MANIFEST)
        objects = {f: f"{remote}/{f.relative_to(local).as_posix()}" for f in data}
        differ = [f for f, obj in objects.items() if not self._put_new(f, obj)]
        self.fs.invalidate_cache()
        if differ and not self.fs.exists(manifest):
            # no manifest vouches for them: a dead writer's objects; ours replace them
            for f in differ:
                self.fs.put_file(str(f), objects[f])
            differ = []
        try:
            self.fs.put_file(str(local / MANIFEST), manifest, mode="create")
            return True
        except FileExistsError:
            pass  # another writer's manifest was there first
        theirs = self._remote_bytes(manifest)
        if theirs == (local / MANIFEST).read_bytes():
            for f in differ:  # the same manifest: a differing object is damaged, repair it
                self.fs.put_file(str(f), objects[f])
            return False
        return self._adopt(subpath, objects)

    def _adopt(self, subpath: str, objects: dict[Path, str]) -> bool:
        """Another manifest is stored at `subpath`: pull that dataset aside and, when it
        verifies, make it the local copy (False). A stored copy that does not verify is
        damaged: ours replaces it, manifest last (True)."""
        from weka_assets.decoding.dataset import quarantine, verify_dataset

        local = self.local(subpath)
        remote = self.url(subpath)
        tmp = Path(tempfile.mkdtemp(prefix=f".adopt-{local.name}-", dir=local.parent))
        try:
            theirs = tmp / local.name
            try:
                self._fetch_folder(remote, theirs)
                problem = verify_dataset(theirs)
            except (OSError, StoreError) as exc:
                problem = str(exc)
            if problem is None:
                aside = quarantine(local)  # ours is moved out whole; readers never see a mix
                os.rename(theirs, local)
                shutil.rmtree(aside, ignore_errors=True)  # not damaged, only not the winner
                return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for f, obj in objects.items():
            if not self._same(f, obj):
                self.fs.put_file(str(f), obj)
        self.fs.put_file(str(local / MANIFEST), f"{remote}/{MANIFEST}")
        return True

    def _put_new(self, path: Path, obj: str) -> bool:
        """Upload `path` as `obj` unless `obj` exists (a conditional write): True when it was
        written or already holds the same bytes; False when it holds other bytes."""
        try:
            self.fs.put_file(str(path), obj, mode="create")
        except FileExistsError:
            return self._same(path, obj)
        return True

    def _same(self, path: Path, obj: str) -> bool:
        """Whether the remote object holds the bytes of the local file (size, then the ETag
        when it is the plain MD5 of a single-part upload, else the bytes themselves)."""
        try:
            info = self.fs.info(obj)
        except FileNotFoundError:
            return False
        if int(info.get("size", -1)) != path.stat().st_size:
            return False
        etag = str(info.get("ETag", "")).strip('"')
        if re.fullmatch(r"[0-9a-f]{32}", etag) and etag == _digest(path, _md5):
            return True
        h = hashlib.sha256()
        with self.fs.open(obj, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest() == _digest(path, hashlib.sha256)

    def _remote_bytes(self, obj: str) -> bytes | None:
        try:
            return self.fs.cat_file(obj)
        except FileNotFoundError:
            return None

    def write_bytes(self, subpath: str, data: bytes) -> str:
        """Write one small object (atomically on local disk; S3 puts are atomic)."""
        # a name aside of its own: concurrent writers of one key never share a file
        with atomic_write(self.local(subpath)) as fh:
            fh.write(data)
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
            self.fs.invalidate_cache()
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


def _md5():
    return hashlib.md5(usedforsecurity=False)  # to compare with an S3 ETag, not for security


def _digest(path: Path, algorithm) -> str:
    h = algorithm()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
