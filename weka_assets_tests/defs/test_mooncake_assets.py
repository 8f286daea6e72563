"""A Mooncake corpus in the registry: its format and block size reach trace_scope and
decoded_dataset (the file one trace of its requests, whose columns trace_scope keeps and the
decode reads), and replay_benchmark's capacity sweep runs on the recorded timestamps."""

import json

import dagster as dg
import pytest
from dagster import AssetKey

from weka_assets.decoding.dataset import read_manifest
from weka_assets.definitions import build_defs, resources
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.instance.materialize import materialize_corpus
from weka_assets_tests.mooncake import mooncake_requests, write_mooncake

pytestmark = pytest.mark.slow


def _latest(instance, asset, partition):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset} [{partition}] not materialized"
    return records[0].asset_materialization


def test_registry_format_and_block_size_reach_the_assets(tmp_path):
    reqs = mooncake_requests(20, seed=5)
    path = write_mooncake(tmp_path / "corpus" / "trace.jsonl", reqs)
    registry = tmp_path / "corpora.yaml"
    registry.write_text(
        "corpora:\n"
        f"  - {{name: mc, source: '{path}', format: mooncake}}\n"
        f"  - {{name: mc-detected, source: '{path}', block_size: 256}}\n"
    )
    res = resources(str(tmp_path / "store"))
    res["catalog"] = CorpusCatalog(registry_path=str(registry))
    defs = build_defs(resource_defs=res)
    with dg.instance_for_test() as instance:
        keys = {}
        for corpus, block_size in (("mc", 512), ("mc-detected", 256)):
            steps = materialize_corpus(corpus, instance, defs)
            assert all(s.success for s in steps), [s for s in steps if not s.success]
            scope = _latest(instance, "trace_scope", corpus)
            assert scope.metadata["format"].value == "mooncake"
            # the file is one trace (of 20 requests), its columns kept for the decode
            assert "PASS: 1/1" in scope.metadata["summary"].value
            assert scope.metadata["dagster/row_count"].value == 1
            assert scope.metadata["parsed_path"].value.endswith(".parsed")
            assert f"mooncake{block_size}" in scope.metadata["report_path"].value
            key = dg.MultiPartitionKey({"corpus": corpus, "tokenizer": "deepseek"})
            dec = _latest(instance, "decoded_dataset", key)
            # read from what trace_scope parsed, not from the JSON again (issue 27)
            assert dec.metadata["decoded_from"].value == "parse"
            material = dec.metadata["key_material"].value
            assert material["block_sizes"] == [block_size]
            assert material["corpus_format"] == "mooncake"  # in the key: the layout changed
            keys[corpus] = dec.metadata["decode_key"].value
            manifest = read_manifest(tmp_path / "store" / "datasets" / keys[corpus])
            assert manifest["corpus_format"] == "mooncake"
            assert (manifest["traces"], manifest["calls"]) == (1, 20)
            curve = json.loads(
                (tmp_path / "store" / "replay" / keys[corpus] / "capacity_curve.json").read_text()
            )
            assert curve["arrival"]["mode"] == "recorded" and curve["calls"] == 20
            bench = _latest(instance, "replay_benchmark", key).metadata
            assert bench["namespace"].value == "corpus"
            wide = bench["corpus_wide_theoretical_hit_rate"].value
            assert bench["headline_hit_rate"].value == wide > 0
            assert bench["headline"].value.startswith("corpus-wide theoretical hit rate")
            assert bench["hit_rates"].value.startswith("**Corpus-wide theoretical hit rate")
        assert keys["mc"] != keys["mc-detected"]  # the block size is in the decode key
        assert len(list((tmp_path / "store").glob("parsed/*"))) == 2  # one per block size
