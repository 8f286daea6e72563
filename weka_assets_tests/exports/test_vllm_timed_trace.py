"""The `mooncake` export replayed by vLLM's own trace replay: `vllm bench serve --dataset-name
timed_trace` from the cached vLLM CPU install (scripts/vllm-cpu-server installs it once, under
~/.cache/weka-assets/vllm-cpu) against the real CPU server, with the chunk size (tokens per hash
id) and the time unit read from the export's sidecar, checks that every request completed.

What vLLM 0.32's reader (`vllm/benchmarks/datasets/datasets.py`, `TimedTrace`) does with a line:
it builds the prompt block by block, `chunk` tokens per id drawn from a seed derived from
`hash(f"{id}:{size}")` (so `PYTHONHASHSEED` is fixed here), the last block cut to what is left of
`input_length`, and stops at the end of `hash_ids`: a prompt is `min(input_length, len(hash_ids)
* chunk)` tokens. A dataset whose traces hash the partial last block (the SemiAnalysis
convention) lists it, so vLLM sends exactly `input_length` tokens; one that leaves it unhashed
(kv-cache-tester, the real sample) exports full blocks only, and vLLM sends each prompt rounded
down to whole blocks. Outputs: timed_trace sets `ignore_eos`, so each request generates exactly
`output_length` tokens.

Three things about that release the test works with:
- the dataset is named `timed_trace` (`--dataset-name timed-trace` is an argparse error);
- the `vllm` console script exits with `PackageNotFoundError: vllm` before parsing anything
  (its `--version` asks for the distribution `vllm`; this install is `vllm-cpu`), so the test
  runs the script's own entry point, `vllm.entrypoints.cli.main:main`, with that one lookup
  answered by `vllm-cpu`'s version;
- with `--save-result --save-detailed` its JSON has `completed`, `failed`, `errors`,
  `input_lens` and `output_lens`, one per request in file order.

The corpus is one synthetic trace (with a subagent) cut to its first eight entries and its
outputs capped at 16 tokens: 17 calls, prompts up to 5,159 tokens. A whole synthetic trace
(67 calls, 33k output tokens) takes over three minutes on two cores.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from weka_assets.exports import export_dataset, meta_path
from weka_assets_tests.servers import vllm_cpu_server

CONTEXT = 8192  # the server's window: every exported prompt plus its output fits
MAX_OUT = 16
TIME_SCALE = 0.005  # 600 s of recorded time in 3 s
VLLM_HOME = Path(
    os.environ.get("WEKA_VLLM_HOME", Path.home() / ".cache" / "weka-assets" / "vllm-cpu")
)

# `vllm bench ...` exactly as the console script runs it, except that the version lookup its
# parser makes first finds this install's distribution (`vllm-cpu`) instead of failing.
VLLM_CLI = """
import importlib.metadata as md
import sys

version = md.version
md.version = lambda name: version("vllm-cpu" if name == "vllm" else name)
from vllm.entrypoints.cli.main import main

sys.argv[0] = "vllm"
sys.exit(main())
"""


def _corpus(profile: str, out: Path) -> Path:
    """The first synthetic trace of `profile`, cut short (see the module docstring)."""
    from weka_assets.synthetic import iter_corpus, write_corpus

    trace = next(iter(iter_corpus(profile, 1, 3, "small")))
    trace["requests"] = trace["requests"][:8]
    for entry in trace["requests"]:
        for call in entry.get("requests", [entry]):  # a subagent's calls, or the call itself
            call["out"] = min(call["out"], MAX_OUT)
    return write_corpus([trace], out)


def _export(profile: str, tmp: Path) -> tuple[Path, dict, list[dict]]:
    """Decode the corpus and export it as `mooncake`: (file, sidecar, lines)."""
    from weka_assets.pipeline import decode_corpus

    corpus = _corpus(profile, tmp / f"{profile}.jsonl")
    dataset = decode_corpus(corpus, tmp / "datasets", measure_drift=False).path
    out = tmp / f"{profile}.mooncake.jsonl"
    export_dataset(dataset, "mooncake", out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return out, json.loads(meta_path(out).read_text()), lines


def _vllm_prompt_lengths(lines: list[dict], chunk: int) -> list[int]:
    """The prompt length vLLM 0.32's timed_trace reader builds from each line."""
    return [min(x["input_length"], len(x["hash_ids"]) * chunk) for x in lines]


@pytest.mark.parametrize("profile", ["semianalysis", "kv-cache-tester"])
def test_the_sidecar_states_what_vllms_reader_needs(profile, tmp_path):
    out, meta, lines = _export(profile, tmp_path)
    # vLLM's default field labels, milliseconds, and the tokens per id
    assert meta["fields"] == ["timestamp", "input_length", "output_length", "hash_ids"]
    assert meta["timestamp"].startswith("milliseconds")
    assert meta["block_size"] == 64 and meta["lines"] == len(lines) == 17
    assert meta["hash_ids"].startswith("cumulative")
    assert max(x["input_length"] + x["output_length"] for x in lines) <= CONTEXT
    chunk = meta["block_size"]
    if profile == "semianalysis":  # the partial last block is hashed: every id listed
        assert _vllm_prompt_lengths(lines, chunk) == [x["input_length"] for x in lines]
    else:  # an unhashed tail has no id: vLLM rounds those prompts down to whole blocks
        assert all(len(x["hash_ids"]) == x["input_length"] // chunk for x in lines)
        assert sum(x["input_length"] % chunk > 0 for x in lines) > 10


# --------------------------------------------------------------------------- the real vLLM


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """The real vLLM CPU server (tiny model, 32-token blocks), and the folder of the model it
    serves (its tokenizer is the one vLLM's client samples prompt tokens from)."""
    run_dir = tmp_path_factory.mktemp("vllm-run-timed-trace")
    with vllm_cpu_server(run_dir, "--max-model-len", str(CONTEXT)) as url:
        yield url, run_dir / "model"


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.parametrize("profile", ["semianalysis", "kv-cache-tester"])
def test_vllm_bench_serve_replays_every_line(vllm_server, profile, tmp_path):
    url, model = vllm_server
    out, meta, lines = _export(profile, tmp_path)
    chunk = meta["block_size"]  # the chunk size the export states, not a constant
    assert meta["timestamp"].startswith("milliseconds")
    result = tmp_path / "result.json"
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0",
        VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
    )  # fmt: skip
    run = subprocess.run(
        [str(VLLM_HOME / "venv" / "bin" / "python"), "-c", VLLM_CLI, "bench", "serve",
         "--base-url", url, "--model", "tiny", "--tokenizer", str(model),
         "--dataset-name", "timed_trace", "--dataset-path", str(out),
         "--num-prompts", str(meta["lines"]),
         "--timed-trace-chunk-hash-size", str(chunk),
         "--timed-trace-sec-multiplier", str(0.001 * TIME_SCALE),
         "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
         "--result-filename", result.name, "--disable-tqdm"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"timed-trace: chunk_size: {chunk}," in run.stdout  # the reader used it
    assert "Self timing is set" in run.stdout  # sent at the lines' timestamps
    got = json.loads(result.read_text())
    # every request completed
    assert got["completed"] == meta["lines"] == len(lines), got["errors"]
    assert got["failed"] == 0 and not any(got["errors"])
    # what vLLM sent: the prompt lengths its reader builds from the lines, the stated outputs
    sent = _vllm_prompt_lengths(lines, chunk)
    assert got["input_lens"] == sent
    assert got["total_input_tokens"] == sum(sent)
    assert got["output_lens"] == [x["output_length"] for x in lines]
    if profile == "semianalysis":  # the whole prompt is listed: the stated lengths exactly
        assert sent == [x["input_length"] for x in lines]
    else:  # full blocks only: each prompt with a tail is sent that tail short
        assert sum(sent) < sum(x["input_length"] for x in lines)
