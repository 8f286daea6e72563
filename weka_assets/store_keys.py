"""Every store key, named once: where each step of the chain keeps what it writes below the
store's base (`weka_assets.store`). Plain strings, store-relative, built only from validated
names and hex digests; the store refuses anything else (`store.key`).

Nothing else spells a key: the chain's store functions (`weka_assets.store_chain`), the assets,
the IO manager and the command line call these. A test keeps string literals of these prefixes
out of the Dagster layer (`weka_assets_tests/test_store_keys.py`).
"""

from weka_assets.store import MANIFEST, key

RAW = "raw"  # raw/<corpus digest>/: a pinned, verified snapshot of a corpus source
PARSED = "parsed"  # parsed/<digest><tag>.parsed: what the scope pass parsed, for the decodes
SCOPE = "scope"  # scope/<digest><tag>-<policy>.json: the corpus report
DATASETS = "datasets"  # datasets/<decode key>/: a decoded dataset, its manifest last
PROVENANCE = "provenance"  # provenance/{datasets,replay}/<decode key>.json: when, where, who
REPLAY = "replay"  # replay/<decode key>/: the replay's results and the capacity sweep
BLAST_RADIUS = "blast_radius"  # blast_radius/<current>-vs-<previous>.json and .png
LIVE = "live"  # live/<decode key>/<run id>/result.json: one replay against a real server
EXPORTS = "exports"  # exports/<decode key>/<format>.jsonl and its .meta.json sidecar
DESCRIPTORS = "descriptors"  # descriptors/<asset>/<partition>.json: what the assets hand on

# the file names of a replay folder
RESULT = "result.json"
PER_CALL = "per_call.parquet"
CAPACITY_CURVE = "capacity_curve.json"
CAPACITY_PLOT = "capacity.png"
CAPACITY_REPORT = "capacity_report.json"
CAPACITY_POLICY_PLOT = "capacity_policies.png"
SCOPE_POLICY_COMPARISON = "scope_policy_comparison.json"


# ---- corpus ----------------------------------------------------------------------------------
def raw_snapshot(digest: str) -> str:
    """The folder of a corpus snapshot, by its content digest."""
    return f"{RAW}/{digest}"


def format_tag(fmt_name: str, block_size: int | None) -> str:
    """What a corpus's format and registry block size add to its scope keys ('' when its traces
    state their own block size): the report then depends on more than the bytes."""
    return f"-{fmt_name}{block_size}" if block_size else ""


def parsed(digest: str, tag: str = "") -> str:
    """The scope pass's kept parse of a corpus (`traces.parsed.keep_parse`)."""
    return f"{PARSED}/{digest}{tag}.parsed"


def scope_report(digest: str, tag: str, policy: str) -> str:
    """The corpus report of a scope pass under a policy."""
    return f"{SCOPE}/{digest}{tag}-{policy}.json"


# ---- datasets --------------------------------------------------------------------------------
def dataset(decode_key: str) -> str:
    return f"{DATASETS}/{decode_key}"


def dataset_manifest(decode_key: str) -> str:
    """Written last: a dataset is complete when this exists."""
    return f"{dataset(decode_key)}/{MANIFEST}"


DATASET_PROVENANCE = f"{PROVENANCE}/{DATASETS}"


def dataset_provenance(decode_key: str) -> str:
    return f"{DATASET_PROVENANCE}/{decode_key}.json"


# ---- replay ----------------------------------------------------------------------------------
def replay_dir(decode_key: str) -> str:
    return f"{REPLAY}/{decode_key}"


def replay_file(decode_key: str, name: str) -> str:
    """A file of a dataset's replay folder (`RESULT`, `PER_CALL`, `CAPACITY_CURVE`, ...)."""
    return f"{replay_dir(decode_key)}/{name}"


def replay_provenance(decode_key: str) -> str:
    return f"{PROVENANCE}/{replay_dir(decode_key)}.json"


def blast_radius(current_key: str, previous_key: str | None) -> str:
    return f"{BLAST_RADIUS}/{current_key}-vs-{previous_key or 'none'}.json"


def blast_radius_plot(current_key: str, previous_key: str | None) -> str:
    return blast_radius(current_key, previous_key).removesuffix(".json") + ".png"


def live_run(decode_key: str, run_id: str) -> str:
    """The folder of one live replay (a run of its own: each is kept)."""
    return f"{LIVE}/{decode_key}/{run_id}"


def live_result(decode_key: str, run_id: str) -> str:
    return f"{live_run(decode_key, run_id)}/{RESULT}"


# ---- exports, descriptors --------------------------------------------------------------------
def export(decode_key: str, fmt: str) -> str:
    return f"{EXPORTS}/{decode_key}/{fmt}.jsonl"


def export_meta(decode_key: str, fmt: str) -> str:
    """The export's sidecar, written last."""
    return export(decode_key, fmt) + ".meta.json"


def descriptor(asset_path: list[str] | tuple[str, ...], partition: str | None) -> str:
    """Where the IO manager keeps an asset partition's descriptor ('|' of a multi-partition
    key as '__'; an unpartitioned asset's is `__all__`)."""
    name = (partition or "__all__").replace("|", "__")
    return key(DESCRIPTORS, *asset_path, f"{name}.json")
