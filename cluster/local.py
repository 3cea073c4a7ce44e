"""A real multi-node Ray cluster on one machine (head + N worker nodes via `ray start`, all on
127.0.0.1) for development and tests: `python cluster/local.py up|down|status|env --state DIR`.
Standalone on purpose (stdlib + psutil): it runs without the package installed."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"
# inherited by every process of the cluster: one of the ways `down` finds them
MARKER_ENV = "MODNET_LOCAL_CLUSTER"
STATE_FILE = "cluster.json"
# ports `ray start` would otherwise take from fixed defaults (6379, 8265, 10001, 52365, ...), which
# collide with a second cluster or an embedded Ray on the same machine
NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)
HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port")
# On Linux Ray rewrites 127.0.0.1 (--node-ip-address, --address) into the machine's outward IP;
# with this variable at 0 it keeps loopback, as on macOS (ray_constants.ENABLE_RAY_CLUSTER).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# ... but then `ray start --address` refuses to start a worker node ("multi-node clusters are not
# supported on Windows and OSX"). This runs the same `ray start` with only that check lifted: the
# CLI module sees ENABLE_RAY_CLUSTER=True, everything else (IP resolution included) sees 0.
WORKER_START = """
import sys, types
import ray._private.ray_constants as constants
import ray.scripts.scripts as scripts
if not hasattr(scripts, "ray_constants"):
    sys.exit("cluster/local.py: this Ray version's CLI changed; cannot start a loopback worker")
view = types.ModuleType("ray_constants_multinode")
view.__dict__.update(vars(constants))
view.ENABLE_RAY_CLUSTER = True
scripts.ray_constants = view
sys.argv[0] = "ray"
sys.exit(scripts.main())
"""


class ClusterError(RuntimeError):
    """The local cluster could not be started, found or stopped."""


def private_prefix(dirs: list[Path]) -> list[str]:
    """A command prefix that runs the rest in a new mount namespace with an empty tmpfs over
    each of `dirs` (what the process and its children see there; the rest is shared)."""
    mounts = " && ".join(f"mount -t tmpfs modnet-private {shlex.quote(str(d))}" for d in dirs)
    return ["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "sh"]


def check_private_dirs(dirs: list[Path], state_dir: Path) -> None:
    """Refuse private folders that would hide the cluster's own files, or that this machine
    cannot make (no unshare, not root)."""
    for d in dirs:
        if not d.is_dir():
            raise ClusterError(f"private dir {d} is not a directory; create it first")
        if state_dir.is_relative_to(d) or Path(sys.executable).is_relative_to(d):
            raise ClusterError(f"private dir {d} would hide the cluster's state or Python")
    probe = subprocess.run(
        [*private_prefix(dirs[:1]), "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise ClusterError(
            "cannot give worker nodes private folders here (needs Linux mount namespaces: "
            f"unshare --mount as root): {probe.stderr.strip() or probe.returncode}"
        )


@dataclass
class NodeSpec:
    name: str
    num_cpus: int
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)


def ray_executable() -> Path:
    """The `ray` script of the interpreter running this file (the project's venv)."""
    path = Path(sys.executable).parent / "ray"
    if not path.exists():
        raise ClusterError(
            f"no `ray` executable next to {sys.executable}; run this file with the venv's python "
            "(.venv/bin/python cluster/local.py ...) or `pip install 'ray[default]'` into it"
        )
    return path


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all sockets held open until every port is chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_resources(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClusterError(
            f"--resources {text!r} is not JSON ({exc}); e.g. '{{\"fake_npu\": 2}}'"
        ) from None
    if not isinstance(value, dict) or not all(isinstance(v, int | float) for v in value.values()):
        raise ClusterError(
            f"--resources {text!r} must map names to numbers, e.g. '{{\"fake_npu\": 2}}'"
        )
    reserved = {"CPU", "GPU", "memory", "object_store_memory"} & set(value)
    if reserved:
        raise ClusterError(
            f"--resources sets {sorted(reserved)}; use --cpus-per-node/--gpus-per-node"
        )
    return {str(k): float(v) for k, v in value.items()}


class LocalCluster:
    """Head + `workers` worker nodes on 127.0.0.1, private temp dir, private auth token.

    Use as a context manager: the cluster is torn down in `__exit__` even when the body fails, and
    `start()` tears down what it started when a node fails to come up.
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        workers: int = 2,
        cpus_per_node: int = 1,
        gpus_per_node: int = 0,
        resources: dict[str, float] | None = None,
        head_cpus: int = 0,
        object_store_mb: int = 128,
        auth: str = "token",
        keep_logs: bool = False,
        timeout_s: float = 180.0,
        ray_config: dict[str, str | int | float] | None = None,
        start_parallel: int | None = None,
        private_dirs: list[str | Path] | None = None,
    ) -> None:
        if workers < 0 or cpus_per_node < 0 or gpus_per_node < 0 or head_cpus < 0:
            raise ClusterError("workers, cpus_per_node, gpus_per_node and head_cpus must be >= 0")
        if auth not in {"token", "disabled"}:
            raise ClusterError(f"auth {auth!r} is unknown; use 'token' or 'disabled'")
        self.state_dir = Path(state_dir).resolve()
        # the head runs GCS, dashboard and job drivers; with 0 CPUs all actors go to the workers
        self.nodes = [NodeSpec("head", head_cpus)] + [
            NodeSpec(f"worker{i}", cpus_per_node, gpus_per_node, dict(resources or {}))
            for i in range(1, workers + 1)
        ]
        self.object_store_mb = object_store_mb
        self.auth = auth
        self.keep_logs = keep_logs
        self.timeout_s = timeout_s
        # Ray system settings for every node, as RAY_<name> variables; e.g. tests that kill a
        # node set {"health_check_period_ms": 500, "health_check_failure_threshold": 3} so that
        # the head marks it dead in ~2 s instead of ~15 s
        self.ray_config = {f"RAY_{k}": str(v) for k, v in (ray_config or {}).items()}
        # worker nodes started at once: 2 per core (at least 2)
        self.start_parallel = max(1, start_parallel or 2 * (os.cpu_count() or 1))
        # folders that the worker nodes do not share with the head: each worker node runs in its
        # own mount namespace with an empty tmpfs over each (Linux, root), as machines without a
        # shared file system would see them
        self.private_dirs = [Path(d).resolve() for d in private_dirs or []]
        if self.private_dirs:
            check_private_dirs(self.private_dirs, self.state_dir)
        self.state: dict[str, Any] = {}

    # --- addresses and environment
    @property
    def gcs_address(self) -> str:
        return str(self.state["gcs_address"])

    @property
    def dashboard_url(self) -> str:
        """The Jobs API / dashboard URL: what `modnet-batch submit --address` takes."""
        return str(self.state["dashboard_url"])

    @property
    def temp_root(self) -> Path:
        return Path(self.state["temp_root"])

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for clients (`ray status`, `modnet-batch submit --address`, ray.init)."""
        env = dict(os.environ if base is None else base)
        env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over our token file
        env.update(self.state.get("client_env", {}))
        return env

    # --- lifecycle
    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start the head, then the workers in parallel; wait until every node is alive."""
        ray = ray_executable()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state_file = self.state_dir / STATE_FILE
        if state_file.exists() and load_state(self.state_dir).get("state") == "up":
            raise ClusterError(
                f"{state_file} describes a cluster that is up; run `python cluster/local.py down "
                f"--state {self.state_dir}` first, or use another --state"
            )
        # short and private: Ray's Unix sockets live under it (107-byte path limit)
        temp_root = Path(
            tempfile.mkdtemp(prefix="mbc-", dir="/tmp" if Path("/tmp").is_dir() else None)
        )
        cluster_id = temp_root.name
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        client_env = {"RAY_AUTH_MODE": self.auth, **LOOPBACK_ENV}
        if self.auth == "token":
            token_path = self.state_dir / "auth_token"
            token_path.write_text(secrets.token_hex(32))
            token_path.chmod(0o600)
            client_env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
        node_env = self._node_env(cluster_id, client_env)
        head_ports = dict(
            zip(HEAD_PORTS + NODE_PORTS, free_ports(len(HEAD_PORTS + NODE_PORTS)), strict=True)
        )
        self.state = {
            "state": "starting",
            "id": cluster_id,
            "temp_root": str(temp_root),
            "state_dir": str(self.state_dir),
            "gcs_address": f"{LOOPBACK}:{head_ports['port']}",
            "dashboard_url": f"http://{LOOPBACK}:{head_ports['dashboard-port']}",
            "auth": self.auth,
            "client_env": client_env,
            "nodes": [],
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "pids": [],
        }
        self._save()
        try:
            head = self.nodes[0]
            head_args = ["--head", "--include-dashboard", "true", "--dashboard-host", LOOPBACK]
            self._launch(ray, head, head_ports, head_args, node_env, logs).wait_ok()
            # in waves: `ray start` gives its raylet 30 s to register (Ray's constant), which
            # 16 nodes starting at once on 2 cores miss; a node that misses it on a busy
            # machine anyway is started once more, alone
            workers = self.nodes[1:]
            join = ["--address", self.gcs_address]
            for first in range(0, len(workers), self.start_parallel):
                wave = workers[first : first + self.start_parallel]
                launches = [self._launch(ray, n, _node_ports(), join, node_env, logs) for n in wave]
                for node, launch in zip(wave, launches, strict=True):
                    try:
                        launch.wait_ok()
                    except ClusterError:
                        for p in self.node_processes(node.name):
                            _signal(p, signal.SIGKILL)
                        self._launch(ray, node, _node_ports(), join, node_env, logs).wait_ok()
            self._wait_alive()
        except BaseException:
            self.stop()
            raise
        self.state["state"] = "up"
        self.state["pids"] = _pid_records(self.processes())
        self._save()
        return self

    def stop(self) -> list[int]:
        """Kill every process of this cluster (SIGTERM, then SIGKILL); returns their pids.

        Works when some are already dead (orphans included: see `find_processes`) and when the
        cluster is already down."""
        if not self.state:
            return []
        procs = self.processes()
        for p in procs:
            _signal(p, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
        # a process may have been forked while we were killing its parent
        late = self.processes()
        for p in late:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(late, timeout=10)
        if not self.keep_logs:
            shutil.rmtree(self.temp_root, ignore_errors=True)
        self.state["state"] = "down"
        self.state["stopped"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with contextlib.suppress(OSError):  # the state dir may be gone (a test's tmp dir)
            self._save()
        return sorted({p.pid for p in [*procs, *late]})

    # --- inspection
    def processes(self) -> list[psutil.Process]:
        """The live processes of this cluster: by marker, temp dir, recorded pid, or ancestry."""
        if not self.state:
            return []
        return find_processes(
            self.state["id"],
            self.state["temp_root"],
            [tuple(x) for x in self.state.get("pids", [])],
        )

    def node_processes(self, name: str) -> list[psutil.Process]:
        """The live processes of one node ("worker2"): its raylet and agents (their command
        line, working directory or open files lie under that node's temp dir) and every process
        they started (its Ray workers). The marker is shared by all nodes, so it is not used."""
        nodes = {n["name"]: n for n in self.state.get("nodes", [])}
        if name not in nodes:
            raise ClusterError(f"no node {name!r} in this cluster (it has: {', '.join(nodes)})")
        prefix = nodes[name]["temp_dir"] + os.sep
        found: dict[int, psutil.Process] = {}
        me = os.getpid()
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid != me and _belongs(p, "", prefix, marker=False):
                found[p.pid] = p
        return _with_children(found, me)

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process of one worker node at once, as a machine that vanishes; returns
        their pids. The head cannot be killed this way (the cluster would be gone)."""
        if name == self.nodes[0].name or name == "head":
            raise ClusterError("kill_node kills a worker node; stop() ends the whole cluster")
        procs = self.node_processes(name)
        for p in procs:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        return sorted(p.pid for p in procs)

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The nodes the cluster reports alive (Ray state API through the dashboard)."""
        data = self._get("/api/v0/nodes?limit=1000&detail=true")
        result = data.get("data", {}).get("result", {}).get("result", [])
        return [n for n in result if n.get("state") == "ALIVE"]

    # --- internals
    def _node_env(self, cluster_id: str, client_env: dict[str, str]) -> dict[str, str]:
        env = self.client_env(dict(os.environ)) | client_env
        env[MARKER_ENV] = cluster_id
        env.pop("RAY_ADDRESS", None)  # `ray start --head` must not join some other cluster
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env.update(self.ray_config)
        # a job's entrypoint runs `python` from PATH on the head: make it this venv's interpreter
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _launch(
        self,
        ray: Path,
        node: NodeSpec,
        ports: dict[str, int],
        extra: list[str],
        env: dict[str, str],
        logs: Path,
    ) -> _Launch:
        temp_dir = self.temp_root / node.name
        temp_dir.mkdir(parents=True, exist_ok=True)
        head = node is self.nodes[0]
        start = [str(ray)] if head else [sys.executable, "-c", WORKER_START]
        if not head and self.private_dirs:
            start = [*private_prefix(self.private_dirs), *start]
        args = [*start, "start", *extra, "--node-ip-address", LOOPBACK]
        args += ["--num-cpus", str(node.num_cpus), "--num-gpus", str(node.num_gpus)]
        if node.resources:
            args += ["--resources", json.dumps(node.resources)]
        args += ["--temp-dir", str(temp_dir), "--disable-usage-stats"]
        args += ["--object-store-memory", str(self.object_store_mb * 1024 * 1024)]
        for key, port in ports.items():
            args += [f"--{key}", str(port)]
        log = logs / f"ray-start-{node.name}.log"
        # a node started again replaces its first record
        self.state["nodes"] = [n for n in self.state["nodes"] if n["name"] != node.name]
        self.state["nodes"].append(
            {
                "name": node.name,
                "temp_dir": str(temp_dir),
                "num_cpus": node.num_cpus,
                "num_gpus": node.num_gpus,
                "resources": node.resources,
                "ports": ports,
                "log": str(log),
            }
        )
        self._save()
        with log.open("a") as sink:
            # cwd in the temp dir: Ray's processes inherit it, which helps `down` find them all
            proc = subprocess.Popen(
                args,
                env=env,
                cwd=temp_dir,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return _Launch(node.name, proc, log, self.timeout_s)

    def _wait_alive(self) -> None:
        want = len(self.nodes)
        deadline = time.monotonic() + self.timeout_s
        seen, last = 0, ""
        while time.monotonic() < deadline:
            try:
                seen = len(self.alive_nodes())
                self._get("/api/jobs/")  # the Jobs API answers too
                if seen >= want:
                    return
            except ClusterError as exc:
                last = str(exc)
            time.sleep(1.0)
        raise ClusterError(
            f"only {seen} of {want} nodes came up in {self.timeout_s:.0f} s ({last}); see the logs "
            f"under {self.state_dir / 'logs'} and {self.temp_root}/*/session_latest/logs"
        )

    def _get(self, path: str) -> Any:
        return http_get(self.dashboard_url + path, self.state.get("client_env", {}))

    def _save(self) -> None:
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.state_dir / STATE_FILE)

    @classmethod
    def attach(cls, state_dir: str | Path) -> LocalCluster:
        """The cluster described by DIR/cluster.json (for `down` and `status`)."""
        cluster = cls(state_dir, workers=0)
        cluster.state = load_state(cluster.state_dir)
        cluster.keep_logs = False
        return cluster


class _Launch:
    """One `ray start` invocation: it returns once its node's processes are running."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float):
        self.name, self.proc, self.log, self.timeout_s = name, proc, log, timeout_s

    def wait_ok(self) -> None:
        try:
            rc = self.proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise ClusterError(
                f"`ray start` for {self.name} hung for {self.timeout_s:.0f} s; see {self.log}"
            ) from None
        if rc != 0:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            raise ClusterError(
                f"`ray start` for {self.name} failed (exit {rc}); {self.log}:\n{tail}"
            )


def _node_ports() -> dict[str, int]:
    return dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS)), strict=True))


def _pid_records(procs: list[psutil.Process]) -> list[list[float]]:
    records = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            records.append([p.pid, p.create_time()])
    return records


def _signal(p: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        p.send_signal(sig)


def find_processes(
    cluster_id: str, temp_root: str, recorded: Iterable[tuple[Any, ...]] = ()
) -> list[psutil.Process]:
    """Every live process of one cluster.

    Ray renames its workers (`ray::UnitWorker`), which also overwrites what /proc shows of their
    command line and environment; so a process belongs to the cluster when its command line, its
    working directory or one of its open files lies under the temp dir, its environment carries
    the marker, it is a recorded pid (same start time), or it descends from one of those."""
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid != me and _belongs(p, cluster_id, temp_root + os.sep):
            found[p.pid] = p
    for pid, created in recorded:
        try:
            p = psutil.Process(int(pid))
            if abs(p.create_time() - float(created)) < 0.01:
                found.setdefault(p.pid, p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return _with_children(found, me)


def _with_children(found: dict[int, psutil.Process], me: int) -> list[psutil.Process]:
    """The live processes of `found` and all their descendants, this process (`me`) aside."""
    for p in list(found.values()):
        try:
            for child in p.children(recursive=True):
                found.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(me, None)
    return [p for p in found.values() if _alive(p)]


def _belongs(p: psutil.Process, cluster_id: str, prefix: str, marker: bool = True) -> bool:
    try:
        if prefix in " ".join(p.info["cmdline"] or []) or (p.cwd() + os.sep).startswith(prefix):
            return True
        if marker and p.environ().get(MARKER_ENV) == cluster_id:
            return True
        return any(f.path.startswith(prefix) for f in p.open_files())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def http_get(url: str, client_env: dict[str, str], timeout: float = 5.0) -> Any:
    """GET a dashboard endpoint as JSON, with the cluster's token when it has one."""
    headers = {}
    if client_env.get("RAY_AUTH_MODE") == "token":
        token = Path(client_env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        raise ClusterError(f"GET {url}: {exc}") from None


def load_state(state_dir: Path) -> dict[str, Any]:
    path = Path(state_dir) / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(
            f"{path} does not exist; start a cluster with "
            f"`python cluster/local.py up --state {state_dir}`"
        ) from None
    return state


def _shell_exports(env: dict[str, str]) -> str:
    import shlex

    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


# --- command line
def _cmd_up(args: argparse.Namespace) -> int:
    cluster = LocalCluster(
        args.state,
        workers=args.workers,
        cpus_per_node=args.cpus_per_node,
        gpus_per_node=args.gpus_per_node,
        resources=parse_resources(args.resources),
        head_cpus=args.head_cpus,
        object_store_mb=args.object_store_mb,
        auth=args.auth,
        timeout_s=args.timeout,
    )
    t0 = time.perf_counter()
    cluster.start()
    env = cluster.state["client_env"]
    print(f"cluster up in {time.perf_counter() - t0:.1f} s: head + {args.workers} worker node(s)")
    print(f"GCS address:  {cluster.gcs_address}")
    print(f"Jobs API URL: {cluster.dashboard_url}")
    print(f"state:        {cluster.state_dir / STATE_FILE}")
    print('client environment (or: eval "$(python cluster/local.py env --state DIR)"):')
    print(_shell_exports({**env, "RAY_ADDRESS": cluster.dashboard_url}))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        cluster = LocalCluster.attach(args.state)
    except ClusterError as exc:
        print(f"nothing to stop: {exc}")
        return 0
    cluster.keep_logs = args.keep_logs
    pids = cluster.stop()
    print(f"stopped {len(pids)} process(es) of cluster {cluster.state['id']}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.attach(args.state)
    procs = cluster.processes()
    print(f"cluster {cluster.state['id']}: {cluster.state['state']}, {len(procs)} live process(es)")
    print(f"GCS address:  {cluster.state['gcs_address']}")
    print(f"Jobs API URL: {cluster.state['dashboard_url']}")
    if not procs:
        return 1 if cluster.state["state"] == "up" else 0
    try:
        nodes = cluster.alive_nodes()
    except ClusterError as exc:
        print(f"dashboard not answering: {exc}")
        return 1
    for n in sorted(nodes, key=lambda n: (not n.get("is_head_node"), n.get("node_id", ""))):
        res = {
            k: v for k, v in (n.get("resources_total") or {}).items() if not k.startswith("node:")
        }
        role = "head  " if n.get("is_head_node") else "worker"
        print(f"  {role} {n.get('node_id', '?')[:12]} {n.get('node_ip')} {json.dumps(res)}")
    expected = len(cluster.state["nodes"])
    return 0 if len(nodes) == expected else 1


def _cmd_env(args: argparse.Namespace) -> int:
    state = load_state(Path(args.state))
    print(_shell_exports({**state["client_env"], "RAY_ADDRESS": state["dashboard_url"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster/local.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up", help="start head + worker nodes; prints the GCS and Jobs API addresses"
    )
    up.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    up.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each worker advertises")
    up.add_argument(
        "--gpus-per-node", type=int, default=0, help="(fake) GPUs each worker advertises"
    )
    up.add_argument("--resources", help="custom resources per worker, JSON: '{\"fake_npu\": 2}'")
    up.add_argument(
        "--head-cpus", type=int, default=0, help="CPUs on the head (0: no actors there)"
    )
    up.add_argument("--object-store-mb", type=int, default=128, help="object store per node")
    up.add_argument("--auth", choices=["token", "disabled"], default="token", help="Ray auth mode")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the nodes")
    down = sub.add_parser("down", help="kill exactly this cluster's processes")
    down.add_argument("--keep-logs", action="store_true", help="keep the Ray temp dir (logs)")
    status = sub.add_parser("status", help="processes and nodes of the cluster")
    env = sub.add_parser("env", help="print `export` lines for clients (auth + RAY_ADDRESS)")
    for p in (up, down, status, env):
        p.add_argument("--state", required=True, help="directory holding cluster.json")
    args = parser.parse_args(argv)
    handlers = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status, "env": _cmd_env}
    try:
        return handlers[args.command](args)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
