"""A Bailian corpus through the command line: validate, scope-report, decode, replay with
the capacity sweep, export; with and without --format, and a broken link named by file, line
and rule. The figures are `weka_assets_tests.bailian`'s, computed without the project."""

import json

import pytest

from weka_assets_tests.bailian import bailian_requests, expected_figures, write_bailian
from weka_assets_tests.test_cli import cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    reqs = bailian_requests(7, seed=11)
    return write_bailian(tmp_path_factory.mktemp("bailian") / "coder.jsonl", reqs), reqs


@pytest.mark.parametrize("given", [[], ["--format", "bailian"]])
def test_the_chain_through_the_command_line(corpus, tmp_path, given):
    path, reqs = corpus
    want = expected_figures(reqs)
    sessions = len(want["per_session"])
    run = cli("validate", path, *given)
    assert run.rc == 0, run.err
    assert f"1 valid trace(s) ({sessions} sessions), {len(reqs)} calls" in run.out
    run = cli("scope-report", path, "--json", tmp_path / "report.json", *given)
    assert run.rc == 0, run.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["traces"], report["calls"]) == (1, len(reqs))  # the file is one trace
    assert report["block_sizes"] == {"16": 1}
    run = cli("decode", path, "--out", tmp_path / "ds", *given)
    assert run.rc == 0, run.err
    dataset = run.last
    manifest = json.loads(
        (tmp_path / "ds" / dataset.rsplit("/", 1)[-1] / "manifest.json").read_text()
    )
    assert manifest["corpus_format"] == "bailian"
    out = tmp_path / "replay.json"
    run = cli("replay", dataset, "--json", out, "--capacity", "auto")
    assert run.rc == 0, run.err
    result = json.loads(out.read_text())
    assert result["calls"] == len(reqs)
    assert (result["hits"], result["blocks"]) == (want["hits"], want["blocks"])
    assert result["corpus_wide_theoretical_hit_rate"] == want["corpus_wide_rate"]
    assert result["capacity_curve"]["arrival"]["mode"] == "recorded"
    per = {r["trace"]: r["blocks"] for r in result["per_trace"]}
    assert per == {f"coder.jsonl:session-{root}": n for root, (_, n) in want["per_session"].items()}
    run = cli("export", dataset, "--format", "mooncake", "--out", tmp_path / "m.jsonl")
    assert run.rc == 0, run.err
    assert json.loads(run.last)["lines"] == len(reqs)


def test_block_size_and_a_broken_link(corpus, tmp_path):
    path, reqs = corpus
    # 16-token ids read as 8-token blocks: fewer ids than blocks, a finding, not an error
    run = cli("scope-report", path, "--json", tmp_path / "r.json", "--block-size", "8")
    assert run.rc == 0, run.err
    assert json.loads((tmp_path / "r.json").read_text())["block_sizes"] == {"8": 1}
    broken = [dict(r) for r in reqs]
    child = next(i for i, r in enumerate(broken) if r["parent_chat_id"] != -1)
    broken[child]["parent_chat_id"] = 7
    bad = write_bailian(tmp_path / "bad.jsonl", broken)
    run = cli("validate", bad)
    assert run.rc == 1
    err = run.err.strip().splitlines()[0]
    assert f"bad.jsonl:{child + 1}: [bailian_missing_parent] parent_chat_id 7:" in err
    run = cli("decode", bad, "--out", tmp_path / "ds")
    assert run.rc == 1 and "[bailian_missing_parent]" in run.err
    assert not (tmp_path / "ds").exists() or not any(
        p.name != ".filler-cache" and not p.name.startswith(".")
        for p in (tmp_path / "ds").iterdir()
    )
