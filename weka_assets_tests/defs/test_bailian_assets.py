"""A Bailian corpus in the registry (`format: bailian`): its format and 16-token blocks reach
trace_scope and decoded_dataset, the file is one trace whose sessions are replay_benchmark's
per-trace rows, and its capacity sweep runs on the recorded timestamps."""

import json

import dagster as dg
import pytest

from weka_assets.decoding.dataset import read_manifest
from weka_assets.definitions import build_defs, resources
from weka_assets.defs.resources import CorpusCatalog
from weka_assets.instance.materialize import materialize_corpus
from weka_assets_tests.bailian import bailian_requests, expected_figures, write_bailian
from weka_assets_tests.defs.test_mooncake_assets import _latest

pytestmark = pytest.mark.slow


def test_registry_format_bailian_reaches_the_assets(tmp_path):
    reqs = bailian_requests(6, seed=8)
    want = expected_figures(reqs)
    sessions = len(want["per_session"])
    path = write_bailian(tmp_path / "corpus" / "coder.jsonl", reqs)
    registry = tmp_path / "corpora.yaml"
    registry.write_text(f"corpora:\n  - {{name: bl, source: '{path}', format: bailian}}\n")
    res = resources(str(tmp_path / "store"))
    res["catalog"] = CorpusCatalog(registry_path=str(registry))
    defs = build_defs(resource_defs=res)
    with dg.instance_for_test() as instance:
        steps = materialize_corpus("bl", instance, defs)
        assert all(s.success for s in steps), [s for s in steps if not s.success]
        scope = _latest(instance, "trace_scope", "bl")
        assert scope.metadata["format"].value == "bailian"
        assert "PASS: 1/1" in scope.metadata["summary"].value  # the file is one trace
        assert "bailian16" in scope.metadata["report_path"].value
        key = dg.MultiPartitionKey({"corpus": "bl", "tokenizer": "deepseek"})
        dec = _latest(instance, "decoded_dataset", key)
        assert dec.metadata["decoded_from"].value == "parse"  # trace_scope's columns (issue 27)
        material = dec.metadata["key_material"].value
        assert material["block_sizes"] == [16] and material["corpus_format"] == "bailian/requests"
        decode_key = dec.metadata["decode_key"].value
        manifest = read_manifest(tmp_path / "store" / "datasets" / decode_key)
        assert manifest["corpus_format"] == "bailian" and manifest["traces"] == 1
        replay_dir = tmp_path / "store" / "replay" / decode_key
        result = json.loads((replay_dir / "result.json").read_text())
        assert (result["hits"], result["blocks"]) == (want["hits"], want["blocks"])
        assert result["corpus_wide_theoretical_hit_rate"] == want["corpus_wide_rate"]
        assert len(result["per_trace"]) == sessions  # a row per session
        curve = json.loads((replay_dir / "capacity_curve.json").read_text())
        assert curve["arrival"]["mode"] == "recorded" and curve["calls"] == len(reqs)
