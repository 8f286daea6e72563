"""A stored dataset damaged on disk (a flipped bit, a truncated or a deleted file) is never
served: the next decode of its key detects it, moves it aside (`.corrupt-<key>-...`) and
rebuilds a dataset equal to the reference; `open_dataset(path, verify=True)` refuses it. The
same holds for a dataset kept on S3 (moto's server): a corrupted remote copy is pulled,
refused, rebuilt and replaced; a corrupted local working copy is replaced by the remote one.
"""

import hashlib
import random
import shutil
from pathlib import Path

import pytest

from weka_assets.decoding.dataset import open_dataset, verify_dataset
from weka_assets.decoding.settings import DecodeSettings
from weka_assets.errors import DecodeError
from weka_assets.pipeline import decode_corpus, scope_report
from weka_assets.versions import MANIFEST_VERSION
from weka_assets_tests.corpora import synthetic
from weka_assets_tests.robustness.faults import SEED, aside, fingerprint, injected, visible

FAULTS = ("flip", "truncate", "delete")
# one of each kind the dataset stores: a memory-mapped array, the calls table, the manifest
KINDS = ("tail_rows.npy", "calls.parquet", "manifest.json")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    corpus = synthetic("semianalysis", traces=4, seed=5)
    root = tmp_path_factory.mktemp("reference")
    report = scope_report(corpus)
    out = decode_corpus(corpus, root, DecodeSettings(), report=report, measure_drift=False)
    return corpus, report, out, fingerprint(out.path)


def corrupt(path: Path, fault: str, rng: random.Random) -> str:
    """Damage one file in place; says what was done."""
    data = path.read_bytes()
    if fault == "flip":
        i, bit = rng.randrange(len(data)), 1 << rng.randrange(8)
        path.write_bytes(data[:i] + bytes([data[i] ^ bit]) + data[i + 1 :])
        return f"bit {bit:#04x} of byte {i} flipped"
    if fault == "truncate":
        n = rng.randrange(len(data))
        path.write_bytes(data[:n])
        return f"cut to {n} of {len(data)} bytes"
    path.unlink()
    return "deleted"


def _copy_dataset(out, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(out.path.parent / ".filler-cache", root / ".filler-cache")
    return Path(shutil.copytree(out.path, root / out.key))


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", KINDS)
def test_damaged_dataset_is_moved_aside_and_rebuilt(reference, tmp_path, request, name, fault):
    corpus, report, ref, ref_print = reference
    rng = random.Random(f"{SEED}-{name}-{fault}")
    stored = _copy_dataset(ref, tmp_path / "root")
    what = corrupt(stored / name, fault, rng)
    injected(request, f"{fault} a stored file")

    assert verify_dataset(stored) is not None, what
    with pytest.raises(DecodeError):
        open_dataset(stored, verify=True)

    out = decode_corpus(
        corpus, tmp_path / "root", DecodeSettings(), report=report, measure_drift=False
    )
    assert out.key == ref.key and not out.reused, f"{what}: the damaged dataset was reused"
    assert fingerprint(out.path) == ref_print
    open_dataset(out.path, verify=True)
    # the damaged copy is kept aside for inspection, under a name no reader takes for a dataset
    assert [p.name for p in visible(tmp_path / "root")] == [ref.key]
    assert len(aside(tmp_path / "root", f".corrupt-{ref.key}-")) == 1


def test_any_damage_to_any_file_is_detected(reference, tmp_path, request):
    """Every stored file, each fault; and single-bit flips all over the manifest, which
    would otherwise leave valid JSON that says something else (its own digest is checked)."""
    _, _, ref, _ = reference
    rng = random.Random(SEED)
    cases = [(p.name, f) for p in sorted(ref.path.iterdir()) for f in FAULTS]
    cases += [("manifest.json", "flip")] * 48
    for i, (name, fault) in enumerate(cases):
        stored = _copy_dataset(ref, tmp_path / f"case-{i}")
        what = corrupt(stored / name, fault, rng)
        injected(request, f"{fault} a stored file")
        assert verify_dataset(stored) is not None, f"{name}: {what} went unnoticed"
        with pytest.raises(DecodeError):
            open_dataset(stored, verify=True)
        shutil.rmtree(tmp_path / f"case-{i}")


# ---- the same on S3: what the Dagster assets pull -------------------------------------------


def _remote_digests(client, bucket: str, prefix: str) -> dict[str, str]:
    out = {}
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        out[obj["Key"].rsplit("/", 1)[1]] = hashlib.sha256(body).hexdigest()
    return out


@pytest.mark.slow
def test_corrupted_copy_on_s3_is_never_served(reference, s3, monkeypatch, tmp_path, request):
    from weka_assets.defs.resources import WekaStore
    from weka_assets.store_chain import decode_in_store

    corpus, report, ref, ref_print = reference
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    client.create_bucket(Bucket="store")
    prefix = f"weka/datasets/{ref.key}/"
    machines = iter(range(100))

    def decode_on_another_machine():
        """decoded_dataset's own path (decode_in_store) with an empty local working copy."""
        store = WekaStore(
            base_path="s3://store/weka", cache_dir=str(tmp_path / f"m{next(machines)}")
        )
        out = decode_in_store(
            store, corpus, DecodeSettings(), report, MANIFEST_VERSION, measure_drift=False
        )
        return store, out

    _, first = decode_on_another_machine()
    assert not first.reused and fingerprint(first.path) == ref_print
    good = _remote_digests(client, "store", prefix)
    assert good["tail_rows.npy"] == ref_print["files"]["tail_rows.npy"]

    rng = random.Random(SEED)
    for name, fault in [
        ("tail_rows.npy", "flip"),
        ("calls.parquet", "delete"),
        ("manifest.json", "truncate"),
    ]:
        # damage the remote copy
        local = tmp_path / "damaged"
        local.write_bytes(client.get_object(Bucket="store", Key=prefix + name)["Body"].read())
        what = corrupt(local, fault, rng)
        if local.exists():
            client.put_object(Bucket="store", Key=prefix + name, Body=local.read_bytes())
        else:
            client.delete_object(Bucket="store", Key=prefix + name)
        injected(request, f"{fault} a file on S3")

        store, out = decode_on_another_machine()
        assert not out.reused, f"remote {name} {what}: the damaged copy was served"
        assert fingerprint(out.path) == ref_print
        # the rebuilt dataset replaced the damaged objects (manifest last)
        assert {
            k: v
            for k, v in _remote_digests(client, "store", prefix).items()
            if k != "manifest.json"
        } == ref_print["files"]
        _, check = decode_on_another_machine()
        assert check.reused and fingerprint(check.path) == ref_print

    # the remote copy is intact, the local working copy damaged: the remote one replaces it
    store, _ = decode_on_another_machine()
    stored = store.local(f"datasets/{ref.key}")
    what = corrupt(stored / "tail_rows.npy", "flip", rng)
    injected(request, "flip a file in the local copy of an S3 store")
    out = decode_in_store(
        store, corpus, DecodeSettings(), report, MANIFEST_VERSION, measure_drift=False
    )
    assert out.reused and fingerprint(out.path) == ref_print, what
