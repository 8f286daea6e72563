"""`weka-assets launch`: what it submits, how it judges runs, and its errors without a server.
The whole path against a real deployment is in weka_assets_tests/cluster/."""

import pytest

from weka_assets.cli import main
from weka_assets.instance.launch import all_succeeded, chain_partitions


def test_the_chain_is_every_asset_of_both_partition_spaces():
    parts = [(p.asset, p.partition) for p in chain_partitions("sample", "deepseek")]
    assert parts == [
        ("raw_traces", "sample"),
        ("trace_scope", "sample"),
        ("decoded_dataset", "sample|deepseek"),
        ("legacy_scope_dataset", "sample|deepseek"),
        ("legacy_scope_replay", "sample|deepseek"),
        ("capacity_curve", "sample|deepseek"),
        ("replay_benchmark", "sample|deepseek"),
        ("manifest_blast_radius", "sample|deepseek"),
    ]


@pytest.mark.parametrize("corpus", ["a|b", "A", "x,y", "../up", ""])
def test_bad_corpus_names_are_refused(corpus):
    with pytest.raises(ValueError, match="invalid corpus name"):
        chain_partitions(corpus, "deepseek")


def _run(run_id, status, retry_of=None):
    return {"run_id": run_id, "status": status, "partition": "c", "retry_of": retry_of}


def test_a_failed_run_counts_only_when_a_retry_replaced_it():
    assert all_succeeded({"runs": [_run("a", "SUCCESS"), _run("b", "SUCCESS")]})
    assert not all_succeeded({"runs": [_run("a", "SUCCESS"), _run("b", "FAILURE")]})
    assert all_succeeded({"runs": [_run("b", "FAILURE"), _run("c", "SUCCESS", retry_of="b")]})
    assert not all_succeeded({"runs": [_run("b", "FAILURE"), _run("c", "FAILURE", retry_of="b")]})
    assert not all_succeeded({"runs": []})


def test_launch_errors_are_one_line(capsys, resetting_endpoint):
    assert main(["launch", "--corpus", "Bad|name", "--url", "http://127.0.0.1:9"]) == 2
    assert "invalid corpus name" in capsys.readouterr().err
    url = resetting_endpoint.url
    assert main(["launch", "--corpus", "sample", "--url", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"weka-assets launch: error: cannot launch through {url}"
    )
