"""deploy/dagster.yaml against Dagster's own instance config schema, offline, and its S3 compute
log manager against moto's S3 server; with a local PostgreSQL (initdb), the whole instance."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema
from dagster._serdes.config_class import ConfigurableClassData

from weka_assets.defs.partitions import CORPUS_TAG
from weka_assets_tests.cluster.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
INSTANCE_YAML = ROOT / "deploy" / "dagster.yaml"

# Every variable deploy/dagster.yaml reads, with a value of the right shape.
ENV = {
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "secret",
    "DAGSTER_PG_HOST": "127.0.0.1",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_COMPUTE_LOG_BUCKET": "dagster-logs",
    "DAGSTER_COMPUTE_LOG_PREFIX": "compute-logs",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
}


def load(tmp_path: Path, text: str | None = None) -> dict:
    """The instance config as Dagster validates and resolves it (env sources filled in)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(text if text is not None else INSTANCE_YAML.read_text())
    config, _ = dagster_instance_config(str(home))  # validates against the instance schema
    resolved = process_config(dagster_instance_config_schema(), config)  # fills in {env: VAR}
    if not resolved.success:
        raise DagsterInvalidConfigError("instance config", resolved.errors, config)
    return resolved.value


def component(config: dict, key: str):
    """The configurable class at `key` (compute_logs, run_coordinator), built the way the
    instance builds it: its config processed against that class's own schema."""
    entry = config[key]
    return ConfigurableClassData(
        entry["module"], entry["class"], yaml.safe_dump(entry.get("config") or {})
    ).rehydrate()


@pytest.fixture
def env(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return ENV


def test_deploy_instance_config_is_valid_and_resolves_the_environment(env, tmp_path, monkeypatch):
    from dagster._daemon import controller

    # building the coordinator sets the backfill loop's interval, process-wide: restore it
    monkeypatch.setattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", 30)
    config = load(tmp_path)
    pg = config["storage"]["postgres"]["postgres_db"]
    assert pg == {
        "username": "dagster",
        "password": "secret",
        "hostname": "127.0.0.1",
        "db_name": "dagster",
        "port": 5432,
        "scheme": "postgresql+psycopg2",
        "params": {},
    }
    runs = config["concurrency"]["runs"]
    # one run per corpus: the tag every run of ours carries, and Dagster's of hand-launched ones
    per_value = {"applyLimitPerUniqueValue": True}
    assert runs["tag_concurrency_limits"] == [
        {"key": CORPUS_TAG, "value": per_value, "limit": 1},
        {"key": "dagster/partition/corpus", "value": per_value, "limit": 1},
    ]
    assert runs["max_concurrent_runs"] >= 1
    assert config["run_retries"]["enabled"] and config["run_retries"]["max_retries"] == 1
    assert config["run_monitoring"]["enabled"] is True
    assert config["telemetry"]["enabled"] is False

    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    from weka_assets.instance.coordinator import CorpusRunCoordinator

    coordinator = component(config, "run_coordinator")
    assert isinstance(coordinator, CorpusRunCoordinator)
    assert coordinator.dequeue_interval_seconds == 1
    assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == coordinator.backfill_interval_seconds == 2
    logs = component(config, "compute_logs")
    assert isinstance(logs, S3ComputeLogManager)
    assert logs._s3_bucket == "dagster-logs"
    assert logs._s3_session.meta.endpoint_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("max_retries: 1", "max_retrys: 1"),  # misspelt key in the instance schema
        ("max_concurrent_runs: 8", "max_concurrent_run: 8"),
        ("  postgres:\n", "  postgre:\n"),
    ],
)
def test_a_misspelt_key_fails_validation(env, tmp_path, old, new):
    text = INSTANCE_YAML.read_text()
    assert old in text
    with pytest.raises(DagsterInvalidConfigError):
        load(tmp_path, text.replace(old, new, 1))


def test_a_misspelt_compute_log_key_fails_in_its_own_schema(env, tmp_path):
    # compute_logs.config is open in the instance schema; S3ComputeLogManager's schema is not
    text = INSTANCE_YAML.read_text().replace("    prefix: {env:", "    prefx: {env:", 1)
    config = load(tmp_path, text)
    with pytest.raises(DagsterInvalidConfigError, match="prefx"):
        component(config, "compute_logs")


def test_an_unset_variable_is_named(env, tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    with pytest.raises(DagsterInvalidConfigError, match="DAGSTER_PG_PASSWORD"):
        load(tmp_path)


def test_compute_logs_reach_an_http_s3_endpoint_with_the_file_as_is(env, tmp_path, s3, monkeypatch):
    """use_ssl stays at its default (true): the http:// endpoint URL decides, so one file serves
    moto on 127.0.0.1 and real S3."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    s3.client().create_bucket(Bucket=ENV["DAGSTER_COMPUTE_LOG_BUCKET"])
    config = load(tmp_path)
    assert "use_ssl" not in config["compute_logs"]["config"]
    logs = component(config, "compute_logs")
    key = ["run-1", "compute_logs", "step"]
    with logs.capture_logs(key):
        print("hello from a step")
    objects = s3.client().list_objects_v2(Bucket=ENV["DAGSTER_COMPUTE_LOG_BUCKET"])
    keys = [o["Key"] for o in objects.get("Contents", [])]
    assert any(k.startswith("compute-logs/storage/run-1/compute_logs/step.") for k in keys), keys


# ---- the whole instance on a local PostgreSQL ----------------------------------------------


def _run(cmd: list[str], timeout: float = 120) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr[-2000:]}"


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL on 127.0.0.1 (trust auth, user and database `dagster`), stopped by
    pg_ctl and removed at the end. As root it runs as the `postgres` user (initdb refuses root)."""
    initdb, pg_ctl, createdb = (shutil.which(n) for n in ("initdb", "pg_ctl", "createdb"))
    if not (initdb and pg_ctl and createdb):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, createdb) are not installed")
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="weka-pg-"))  # outside pytest's 0700 tmp tree
    data = root / "data"
    try:
        if prefix:
            shutil.chown(root, "postgres")
        port = free_port()
        _run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "dagster"])
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        _run([*prefix, pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "-o", opts, "start"])
        try:
            _run(
                [*prefix, createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"]
            )
            yield port
        finally:
            subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "stop"], timeout=120)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.live
def test_the_instance_runs_a_job_on_postgres_with_s3_compute_logs(
    tmp_path, postgres, s3, monkeypatch
):
    for name, value in {
        **ENV,
        **s3.env,
        "DAGSTER_PG_PORT": str(postgres),
        "DAGSTER_PG_PASSWORD": "",
    }.items():
        monkeypatch.setenv(name, value)
    s3.client().create_bucket(Bucket=ENV["DAGSTER_COMPUTE_LOG_BUCKET"])
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")

    @dg.asset
    def hello() -> int:
        print("hello from a step")
        return 1

    started = time.monotonic()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        result = dg.materialize([hello], instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id) is not None
    objects = s3.client().list_objects_v2(Bucket=ENV["DAGSTER_COMPUTE_LOG_BUCKET"])
    assert objects.get("KeyCount", 0) >= 1, objects
    assert time.monotonic() - started < 120
