"""The whole chain with its corpus in S3 and its asset store on S3 (a real HTTP S3 endpoint:
moto's server on 127.0.0.1, through s3fs)."""

import dagster as dg
import orjson
import pytest

from weka_assets.definitions import build_defs, resources_for
from weka_assets.defs.resources import CorpusCatalog, WekaStore
from weka_assets.instance.materialize import materialize_corpus
from weka_assets.instance.staleness import stale_partitions
from weka_assets_tests.corpora import synthetic

pytestmark = pytest.mark.slow


def test_whole_chain_reads_s3_and_stores_on_s3(s3, monkeypatch, tmp_path):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    client = s3.client()
    client.create_bucket(Bucket="corpora")
    client.create_bucket(Bucket="store")
    client.upload_file(str(synthetic("semianalysis", traces=3, seed=5)), "corpora", "alpha.jsonl")
    catalog = CorpusCatalog(corpora={"alpha": "s3://corpora/alpha.jsonl"})

    def defs_with_cache(name):
        store = WekaStore(base_path="s3://store/weka", cache_dir=str(tmp_path / name))
        return build_defs(resource_defs=resources_for(store, catalog))

    with dg.instance_for_test() as instance:
        steps = materialize_corpus(
            "alpha", instance, defs_with_cache("cache-a"), log_level="WARNING"
        )
        assert [s.success for s in steps] == [True, True], [s.failures for s in steps]
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="store")["Contents"]]
        tops = {k.split("/")[1] for k in keys}
        assert tops >= {
            "raw", "scope", "parsed", "datasets", "replay", "blast_radius", "descriptors"
        }  # fmt: skip
        dec = instance.get_latest_materialization_event(dg.AssetKey("decoded_dataset"))
        assert dec.asset_materialization.metadata["decoded_from"].value == "parse"
        ref = steps[1].outputs["decoded_dataset"]
        assert f"weka/{ref.key}/manifest.json" in keys
        # the manifest is the last object of the dataset written
        manifest = orjson.loads(
            client.get_object(Bucket="store", Key=f"weka/{ref.key}/manifest.json")["Body"].read()
        )
        assert set(manifest["files"]) <= {
            k.rsplit("/", 1)[1] for k in keys if k.startswith(f"weka/{ref.key}/")
        }
        raw = steps[0].outputs["raw_traces"]
        assert raw.revision.startswith("etag:") and raw.source == "s3://corpora/alpha.jsonl"

        # another machine (an empty local cache) finds the dataset on S3 and reuses it
        again = materialize_corpus(
            "alpha", instance, defs_with_cache("cache-b"), log_level="WARNING"
        )
        assert all(s.success for s in again)
        assert again[1].outputs["decoded_dataset"].reused
        assert again[1].outputs["decoded_dataset"].decode_key == ref.decode_key
        assert stale_partitions(defs_with_cache("cache-b"), instance) == []
        # ... by pulling it (manifest included) into its own cache, not by decoding again
        pulled = tmp_path / "cache-b" / "datasets" / ref.decode_key
        assert (pulled / "manifest.json").is_file()
        assert orjson.loads((pulled / "manifest.json").read_bytes()) == manifest
        # where and when it was written is beside it, not in it
        assert "created_unix" not in manifest
        record = client.get_object(Bucket="store", Key=f"weka/provenance/{ref.key}.json")
        assert set(orjson.loads(record["Body"].read())) >= {
            "created_unix",
            "host",
            "pid",
            "written_from",
        }
