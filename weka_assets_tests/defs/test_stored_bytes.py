"""The chain materialized by two machines (two store folders, two copies of the corpus, two
times) stores identical datasets and replay results: their bytes depend on the content only.
Where and when each was written is in `provenance/`, beside them."""

import time
from pathlib import Path

import dagster as dg
import orjson
import pytest

from weka_assets.definitions import build_defs, resources
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.instance.materialize import materialize_corpus
from weka_assets_tests.corpora import synthetic

pytestmark = pytest.mark.slow


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def materialize_on_a_machine(machine: Path) -> dict:
    corpus = machine / "corpora" / "tiny.jsonl"
    corpus.parent.mkdir(parents=True)
    corpus.write_bytes(synthetic("kv-cache-tester", traces=4, seed=6).read_bytes())
    res = resources(str(machine / "store"))
    res["catalog"] = CorpusCatalog(corpora={"tiny": str(corpus)})
    with dg.instance_for_test() as instance:
        steps = materialize_corpus("tiny", instance, build_defs(resource_defs=res))
    assert [s.success for s in steps] == [True, True], [s.failures for s in steps]
    return steps[1].outputs


def test_two_machines_store_identical_datasets_and_replay_results(tmp_path, monkeypatch):
    first = materialize_on_a_machine(tmp_path / "machine-a")
    now = time.time
    monkeypatch.setattr(time, "time", lambda: now() + 86_400)  # a day later
    second = materialize_on_a_machine(tmp_path / "elsewhere" / "machine-b")
    key = first["decoded_dataset"].decode_key
    assert second["decoded_dataset"].decode_key == key
    stores = [tmp_path / "machine-a" / "store", tmp_path / "elsewhere" / "machine-b" / "store"]
    for sub in (f"datasets/{key}", f"replay/{key}", "scope", "raw"):
        a, b = (files_of(s / sub) for s in stores)
        assert a and set(a) == set(b), sub
        assert [n for n in a if a[n] != b[n]] == [], sub
    names = set(files_of(stores[0] / f"replay/{key}"))
    assert {"result.json", "capacity_curve.json", "scope_policy_comparison.json"} <= names
    result = orjson.loads((stores[0] / f"replay/{key}/result.json").read_bytes())
    assert result["dataset"] == key
    # the provenance records tell the two apart
    for sub in (f"provenance/datasets/{key}.json", f"provenance/replay/{key}.json"):
        a, b = (orjson.loads((s / sub).read_bytes()) for s in stores)
        assert b["created_unix"] > a["created_unix"] and a["written_from"] != b["written_from"]
        assert a["written_from"].startswith(str(stores[0]))
