"""A Dagster deployment on one machine, every part real: `scripts/cluster start|stop|status|reload`.

PostgreSQL (its own cluster in a folder, on 127.0.0.1) holds the instance; Redis is the Celery
broker and result backend; moto's S3 server holds the store and the compute logs; the
dagster-daemon queues, retries and backfills runs; the webserver serves the UI and GraphQL; N
dagster-celery workers run the steps, each with its own local cache folder and host name, as if
each were its own machine. The instance is `deploy/dagster.yaml` verbatim, configured through
the environment written to `<state>/cluster.env`.

Every process is started in its own session and stopped by its PID (SIGTERM to its group, then
SIGKILL). `reload` restarts the processes that run code (daemon, webserver, workers), keeping
the data services: what an operator does when deploying new code.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from weka_assets.atomic import atomic_write

ROOT = Path(__file__).resolve().parents[2]  # the repository: weka_assets_tests/cluster/harness.py
STATE = ".cluster"
BUCKET = "weka-store"
LOG_BUCKET = "dagster-logs"
# moto accepts any credentials; these name no real account
FAKE_KEY = "testing"
DB = "dagster"
# a killed worker's unacknowledged step goes back to the queue after this long; a step that
# runs longer is delivered twice (harmless: publication is exclusive, but wasted), so it must
# exceed the longest step
VISIBILITY_TIMEOUT = 600
DATA_SERVICES = ("postgres", "redis", "s3")
CODE_SERVICES = ("daemon", "webserver")


class ClusterError(RuntimeError):
    """The cluster could not be started, or is not running."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """The state folder of one cluster: `state.json` (ports, PIDs, project), logs, data."""

    state_dir: Path

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "cluster.env"

    @property
    def home(self) -> Path:
        return self.state_dir / "dagster-home"

    def log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def load(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise ClusterError(
                f"no cluster at {self.state_dir} (run `scripts/cluster start`)"
            ) from None

    def save(self, state: dict) -> None:
        with atomic_write(self.state_file) as fh:
            fh.write(json.dumps(state, indent=2).encode())

    # ---- the environment every part shares ---------------------------------------------------
    def environment(self, state: dict) -> dict[str, str]:
        p = state["ports"]
        redis = f"redis://127.0.0.1:{p['redis']}"
        s3 = f"http://127.0.0.1:{p['s3']}"
        return {
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(p["postgres"]),
            "DAGSTER_PG_USERNAME": "postgres",
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": DB,
            "DAGSTER_COMPUTE_LOG_BUCKET": LOG_BUCKET,
            "DAGSTER_COMPUTE_LOG_PREFIX": "compute-logs",
            "AWS_ENDPOINT_URL": s3,
            "AWS_ACCESS_KEY_ID": FAKE_KEY,
            "AWS_SECRET_ACCESS_KEY": FAKE_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "WEKA_ASSETS_STORE": f"s3://{BUCKET}/data",
            "WEKA_ASSETS_EXECUTOR": "celery",
            "WEKA_ASSETS_CELERY_BROKER": f"{redis}/0",
            "WEKA_ASSETS_CELERY_BACKEND": f"{redis}/1",
            "WEKA_ASSETS_CELERY_VISIBILITY_TIMEOUT": str(
                state.get("visibility_timeout") or VISIBILITY_TIMEOUT
            ),
            "WEKA_ASSETS_WEBSERVER": f"http://127.0.0.1:{p['webserver']}",
            **({"WEKA_ASSETS_REGISTRY": state["registry"]} if state.get("registry") else {}),
        }

    def write_env(self, state: dict) -> None:
        lines = [f"export {k}={_shell_quote(v)}" for k, v in self.environment(state).items()]
        self.env_file.write_text("\n".join(lines) + "\n")


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


# ---- processes ---------------------------------------------------------------------------------


def _default_signals() -> None:
    """In the child: SIGINT and SIGTERM at their defaults (a parent started in the background
    by a non-interactive shell passes SIGINT on ignored, and the Dagster servers then ignore
    SIGTERM too)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _spawn(cluster: Cluster, name: str, argv: list[str], env: dict, cwd: Path, **kw) -> int:
    """Start one part in its own session, output to its log; its PID."""
    log = open(cluster.log(name), "ab")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_signals,
            **kw,
        )
    finally:
        log.close()
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process is not alive
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def stop_pid(pid: int | None, grace: float = 15) -> None:
    """SIGTERM to the process group `pid` leads, then SIGKILL to whatever is left of it."""
    if not pid:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.2)


def _wait(
    what: str, check, timeout: float, log: Path | None = None, pid: int | None = None
) -> None:
    """Until `check()` holds; fails with the log's tail after `timeout` or once `pid` is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (pid is None or alive(pid)):
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    why = "exited" if pid is not None and not alive(pid) else f"did not come up in {timeout:.0f}s"
    raise ClusterError(f"{what} {why}\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- installing what is missing ----------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def ensure_installed() -> Path:
    """PostgreSQL and Redis from Debian's packages when missing; the PostgreSQL bin folder."""
    missing = []
    if _postgres_bin() is None:
        missing.append("postgresql")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise ClusterError(f"install {' '.join(missing)} first (needs apt-get as root)")
        print(f"installing {' '.join(missing)} (apt-get)", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
        )
    pg = _postgres_bin()
    if pg is None:
        raise ClusterError("PostgreSQL's initdb was not found after installing postgresql")
    return pg


def _as_postgres() -> dict:
    """Popen arguments that run PostgreSQL as the `postgres` user when we are root (it refuses
    to run as root)."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


# ---- start / stop / status / reload ------------------------------------------------------------


def start(
    cluster: Cluster,
    workers: int = 2,
    project: Path = ROOT,
    registry: str | None = None,
    pin_cores: bool = False,
    sensors_stopped: bool = False,
    visibility_timeout: int = VISIBILITY_TIMEOUT,
) -> dict:
    """Start every part; returns the state. Refuses when a cluster is already running there."""
    if cluster.state_file.exists() and any(alive(pid) for pid in _pids(cluster.load()).values()):
        raise ClusterError(f"a cluster is already running at {cluster.state_dir} (stop it first)")
    pg_bin = ensure_installed()
    if cluster.state_dir.exists():
        shutil.rmtree(cluster.state_dir)
    (cluster.state_dir / "logs").mkdir(parents=True)
    cluster.home.mkdir()
    state = {
        "project": str(Path(project).resolve()),
        "registry": str(Path(registry).resolve()) if registry else None,
        "workers": workers,
        "pin_cores": pin_cores,
        "sensors_stopped": sensors_stopped,
        "visibility_timeout": visibility_timeout,
        "ports": {n: free_port() for n in (*DATA_SERVICES, "webserver")},
        "pids": {},
    }
    cluster.save(state)
    try:
        _start_data_services(cluster, state, pg_bin)
        _start_code_services(cluster, state)
    except BaseException:
        stop(cluster)
        raise
    return state


def _start_data_services(cluster: Cluster, state: dict, pg_bin: Path) -> None:
    p, pids = state["ports"], state["pids"]
    env = dict(os.environ)
    # PostgreSQL: its own cluster in a folder, socket and TCP on 127.0.0.1 only
    data, sock = cluster.state_dir / "pgdata", cluster.state_dir / "pgsock"
    for d in (data, sock):
        d.mkdir()
        if os.geteuid() == 0:
            shutil.chown(d, "postgres", "postgres")
    os.chmod(cluster.state_dir, 0o755)
    initdb = subprocess.run(
        [str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
        capture_output=True,
        text=True,
        **_as_postgres(),
    )
    if initdb.returncode:
        raise ClusterError(
            f"initdb failed (as root, PostgreSQL runs as user postgres, which must be able to "
            f"reach {data}): {initdb.stderr.strip()[-1500:]}"
        )
    pids["postgres"] = _spawn(
        cluster,
        "postgres",
        [str(pg_bin / "postgres"), "-D", str(data), "-p", str(p["postgres"]), "-k", str(sock),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        env, cluster.state_dir, **_as_postgres(),
    )  # fmt: skip
    pids["redis"] = _spawn(
        cluster,
        "redis",
        ["redis-server", "--port", str(p["redis"]), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        env, cluster.state_dir,
    )  # fmt: skip
    moto = Path(sys.executable).with_name("moto_server")
    pids["s3"] = _spawn(
        cluster, "s3", [str(moto), "-H", "127.0.0.1", "-p", str(p["s3"])], env, cluster.state_dir
    )
    cluster.save(state)
    for name in DATA_SERVICES:
        _wait(name, lambda n=name: _port_open(p[n]), 60, cluster.log(name))
    _wait("postgres", lambda: _create_database(p["postgres"]), 60, cluster.log("postgres"))
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{p['s3']}",
        aws_access_key_id=FAKE_KEY,
        aws_secret_access_key=FAKE_KEY,
        region_name="us-east-1",
    )
    for bucket in (BUCKET, LOG_BUCKET):
        s3.create_bucket(Bucket=bucket)


def _create_database(port: int) -> bool:
    import psycopg2

    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    except psycopg2.OperationalError:
        return False
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {DB}")
    finally:
        conn.close()
    return True


def _code_env(cluster: Cluster, state: dict) -> dict:
    env = dict(os.environ, **cluster.environment(state))
    # this environment's commands first (dagster-celery starts `celery` by name)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    project = state["project"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project, env.get("PYTHONPATH")]))
    # the services' own default signal handling (a non-interactive parent may ignore SIGINT)
    return env


def _start_code_services(cluster: Cluster, state: dict) -> None:
    p, pids = state["ports"], state["pids"]
    project = Path(state["project"])
    env = _code_env(cluster, state)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", cluster.home / "dagster.yaml")
    workspace = cluster.state_dir / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: weka_assets.definitions\n"
        f"      attribute: defs\n      location_name: weka_assets\n"
        f"      working_directory: {project}\n"
    )
    cluster.write_env(state)
    # the workers' config is the executor's own, from the same environment
    celery_yaml = cluster.state_dir / "celery.yaml"
    celery_yaml.write_text(
        subprocess.run(
            [sys.executable, "-m", "weka_assets.executors", "celery-yaml"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    bindir = Path(sys.executable).parent
    pids["webserver"] = _spawn(
        cluster,
        "webserver",
        [str(bindir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(p["webserver"]),
         "-w", str(workspace)],
        env, project,
    )  # fmt: skip
    cluster.save(state)
    url = env["WEKA_ASSETS_WEBSERVER"]
    _wait("webserver", lambda: _code_loaded(url), 180, cluster.log("webserver"), pids["webserver"])
    if state.get("sensors_stopped"):  # before the daemon's first tick
        stop_sensors(url)
    pids["daemon"] = _spawn(
        cluster, "daemon", [str(bindir / "dagster-daemon"), "run", "-w", str(workspace)], env,
        project,
    )  # fmt: skip
    cores = sorted(os.sched_getaffinity(0))
    for i in range(1, state["workers"] + 1):
        name = f"w{i}"
        wenv = dict(env, WEKA_ASSETS_HOST=name, WEKA_ASSETS_CACHE=str(cluster.state_dir / name))
        argv = [str(bindir / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                "-y", str(celery_yaml), "-n", f"{name}@%h", "--", "--concurrency=1",
                "--pool=prefork"]  # fmt: skip
        if state.get("pin_cores"):  # one core each, as on machines of one core
            wenv["WEKA_ASSETS_WORKERS"] = "1"
            argv = ["taskset", "-c", str(cores[(i - 1) % len(cores)]), *argv]
        open(cluster.log(name), "wb").close()
        pids[name] = _spawn(cluster, name, argv, wenv, project)
    cluster.save(state)
    for i in range(1, state["workers"] + 1):
        log = cluster.log(f"w{i}")
        _wait(
            f"worker w{i}", lambda log=log: b" ready." in log.read_bytes(), 120, log, pids[f"w{i}"]
        )


_LOADED = """{ workspaceOrError { ... on Workspace { locationEntries { loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _code_loaded(url: str) -> bool:
    body = httpx.post(f"{url}/graphql", json={"query": _LOADED}, timeout=5).json()
    entries = body["data"]["workspaceOrError"]["locationEntries"]
    if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
        return False
    errors = [
        e["locationOrLoadError"]["message"]
        for e in entries
        if e["locationOrLoadError"]["__typename"] == "PythonError"
    ]
    if errors:
        raise ClusterError(f"the code location failed to load: {errors[0][-1500:]}")
    return True


_SENSORS = """{ sensorsOrError(repositorySelector: {repositoryName: "__repository__",
  repositoryLocationName: "weka_assets"}) { ... on Sensors { results { name
  sensorState { id status } } } } }"""
_STOP_SENSOR = """mutation($id: String!) { stopSensor(id: $id) { __typename
  ... on StopSensorMutationResult { instigationState { status } }
  ... on PythonError { message } } }"""


def stop_sensors(url: str) -> list[str]:
    """Stop every sensor of the code location (runs then start only when launched); their names."""
    body = httpx.post(f"{url}/graphql", json={"query": _SENSORS}, timeout=30).json()
    stopped = []
    for sensor in body["data"]["sensorsOrError"]["results"]:
        if sensor["sensorState"]["status"] == "RUNNING":
            answer = httpx.post(
                f"{url}/graphql",
                json={"query": _STOP_SENSOR, "variables": {"id": sensor["sensorState"]["id"]}},
                timeout=30,
            ).json()
            if answer.get("errors") or answer["data"]["stopSensor"]["__typename"] == "PythonError":
                raise ClusterError(f"cannot stop sensor {sensor['name']}: {answer}")
            stopped.append(sensor["name"])
    return stopped


def _pids(state: dict) -> dict[str, int]:
    return dict(state.get("pids") or {})


def stop(cluster: Cluster) -> None:
    """Stop every part by PID: code first, the data services last."""
    state = cluster.load()
    pids = _pids(state)
    order = [n for n in pids if n not in DATA_SERVICES] + [n for n in DATA_SERVICES if n in pids]
    for name in order:
        stop_pid(pids[name])


def reload(cluster: Cluster, project: Path | None = None) -> dict:
    """Restart the daemon, the webserver and the workers on the project's current code (new code
    deployed); PostgreSQL, Redis and S3 keep their data."""
    state = cluster.load()
    for name in [n for n in _pids(state) if n not in DATA_SERVICES]:
        stop_pid(state["pids"].pop(name))
    if project is not None:
        state["project"] = str(Path(project).resolve())
    cluster.save(state)
    _start_code_services(cluster, state)
    return state


def status(cluster: Cluster) -> list[dict]:
    state = cluster.load()
    ports = state.get("ports", {})
    return [
        {"part": name, "pid": pid, "alive": alive(pid), "port": ports.get(name)}
        for name, pid in _pids(state).items()
    ]


# ---- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", default=os.environ.get("WEKA_CLUSTER_DIR", str(ROOT / STATE)),
        help="state folder (default: $WEKA_CLUSTER_DIR or ./.cluster)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start the deployment; prints the env file and URL")
    p_start.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
    p_start.add_argument("--project", default=str(ROOT), help="the code to load (a checkout)")
    p_start.add_argument("--registry", default=None, help="corpus registry (default corpora.yaml)")
    p_start.add_argument(
        "--pin-cores", action="store_true", help="one CPU core per worker, one process each"
    )
    p_start.add_argument(
        "--sensors-stopped",
        action="store_true",
        help="stop the discovery and automation sensors: runs start only when launched",
    )
    p_start.add_argument(
        "--visibility-timeout",
        type=int,
        default=VISIBILITY_TIMEOUT,
        metavar="S",
        help=f"seconds before a dead worker's step is redelivered (default {VISIBILITY_TIMEOUT}; "
        "longer than the longest step)",
    )
    sub.add_parser("stop", help="stop every part by PID")
    sub.add_parser("status", help="every part, its PID and whether it is alive")
    p_reload = sub.add_parser("reload", help="restart daemon, webserver, workers on new code")
    p_reload.add_argument("--project", default=None, help="load the code from here from now on")
    args = parser.parse_args(argv)
    cluster = Cluster(Path(args.dir).resolve())
    try:
        if args.command == "start":
            if args.workers < 1:
                parser.error("--workers must be 1 or more")
            state = start(
                cluster,
                args.workers,
                Path(args.project),
                args.registry,
                args.pin_cores,
                args.sensors_stopped,
                args.visibility_timeout,
            )
        elif args.command == "reload":
            state = reload(cluster, Path(args.project) if args.project else None)
        elif args.command == "stop":
            stop(cluster)
            print(f"stopped the cluster at {cluster.state_dir}")
            return 0
        else:
            rows = status(cluster)
            for r in rows:
                state_word = "running" if r["alive"] else "stopped"
                port = f" port {r['port']}" if r["port"] else ""
                print(f"{r['part']:<10} pid {r['pid']:<8} {state_word}{port}")
            return 0 if rows and all(r["alive"] for r in rows) else 1
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    print(f"env file: {cluster.env_file} (source it to use this deployment)")
    print(cluster.environment(state)["WEKA_ASSETS_WEBSERVER"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
