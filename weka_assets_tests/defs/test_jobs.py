"""The jobs and the chain's launch list derive from the assets: a new asset is its module and
one entry of the one list (`weka_assets.defs.assets.MODULES`), and it shows up in the
definitions, in `decode_job` (or its own on-demand job) and in what `weka-assets launch` and
`materialize` submit, with no other list to edit."""

import json
import subprocess
import sys
import textwrap
import types

import dagster as dg

from weka_assets.defs import assets as assets_package
from weka_assets.defs import jobs
from weka_assets.defs.assets import build_assets
from weka_assets.instance import launch, materialize

NEW_ASSET = "new_figure"


def new_asset_module(automated: bool = True):
    """An asset module as a new one would be: its `build` and, when on demand, its `JOBS`."""
    from weka_assets.defs.helpers import decoding_asset
    from weka_assets.defs.outputs import DatasetRef

    def build(manifest_version: int):
        @dg.asset(
            name=NEW_ASSET,
            description="a new figure of the decoded dataset",
            **decoding_asset(manifest_version, "replay", {"python"}, automated=automated),
        )
        def new_figure(decoded_dataset: DatasetRef) -> None:
            return None

        return [new_figure]

    job = dg.define_asset_job("new_figure_job", selection=dg.AssetSelection.assets(NEW_ASSET))
    return types.SimpleNamespace(build=build, **({} if automated else {"JOBS": [job]}))


def job_assets(defs: dg.Definitions, name: str) -> set[str]:
    job = defs.resolve_job_def(name)
    return {k.to_user_string() for k in job.asset_layer.selected_asset_keys}


def test_the_launch_list_is_the_chain_of_the_assets():
    corpus, decode = jobs.chain_assets(build_assets())
    assert (jobs.CORPUS_ASSETS, jobs.DECODE_ASSETS) == (corpus, decode)
    assert corpus == ("raw_traces", "trace_scope")
    assert decode == (
        "decoded_dataset",
        "legacy_scope_dataset",
        "legacy_scope_replay",
        "capacity_curve",
        "replay_benchmark",
        "manifest_blast_radius",
    )
    assert (launch.CORPUS_ASSETS, launch.DECODE_ASSETS) == (corpus, decode)
    assert materialize.CORPUS_ASSETS == list(corpus)


def test_a_new_chain_asset_reaches_definitions_jobs_and_the_launch_list(monkeypatch, tmp_path):
    from weka_assets.definitions import build_defs, resources

    monkeypatch.setattr(assets_package, "MODULES", (*assets_package.MODULES, new_asset_module()))
    defs = build_defs(resource_defs=resources(str(tmp_path)))
    dg.Definitions.validate_loadable(defs)
    assert dg.AssetKey(NEW_ASSET) in defs.resolve_asset_graph().get_all_asset_keys()
    assert NEW_ASSET in job_assets(defs, "decode_job")
    assert NEW_ASSET not in job_assets(defs, "scope_job")
    assert NEW_ASSET in materialize.decode_assets(defs)  # weka-assets materialize
    assert jobs.chain_assets(build_assets())[1][-1] == NEW_ASSET


def test_a_new_on_demand_asset_brings_its_own_job(monkeypatch, tmp_path):
    from weka_assets.definitions import build_defs, resources

    monkeypatch.setattr(
        assets_package, "MODULES", (*assets_package.MODULES, new_asset_module(automated=False))
    )
    defs = build_defs(resource_defs=resources(str(tmp_path)))
    assert job_assets(defs, "new_figure_job") == {NEW_ASSET}
    assert NEW_ASSET not in job_assets(defs, "decode_job")
    assert NEW_ASSET not in materialize.decode_assets(defs)


def test_weka_assets_launch_submits_a_new_chain_asset():
    """In a process of its own, where the one list has the new asset before anything reads it:
    `launch`'s partitions of a corpus's chain then name it."""
    script = textwrap.dedent(
        f"""
        import json, types
        import dagster as dg
        from weka_assets.defs import assets
        from weka_assets.defs.helpers import decoding_asset
        from weka_assets.defs.outputs import DatasetRef

        def build(manifest_version):
            @dg.asset(name={NEW_ASSET!r}, **decoding_asset(manifest_version, "replay", {{"python"}}))
            def new_figure(decoded_dataset: DatasetRef) -> None:
                return None

            return [new_figure]

        assets.MODULES = (*assets.MODULES, types.SimpleNamespace(build=build))
        from weka_assets.instance.launch import chain_partitions
        print(json.dumps([[p.asset, p.partition] for p in chain_partitions("c", "deepseek")]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    parts = json.loads(out.strip().splitlines()[-1])
    assert [NEW_ASSET, "c|deepseek"] in parts
    assert ["trace_scope", "c"] in parts
