"""A cluster of one on this machine: Spark standalone master + worker, a Ray head, an MLflow
tracking server, a Prefect server and a process worker, each a background process in its own
process group, stopped by that group's id.

The pyspark wheel ships ``bin/spark-class`` but not ``sbin/start-master.sh``, so the Spark
daemons run as ``spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``
in the foreground of their own group. ``ray start --block`` keeps Ray's head in the
foreground likewise, and ``--temp-dir`` keeps its address file out of Ray's default temp folder so that
other programs' ``ray.init()`` on this machine never attach to it.

Used by tests/test_cluster.py and tests/test_deployments.py, and from a shell:
``python -m flows.cluster up STATE_DIR`` prints the environment to export (and writes
``STATE_DIR/pids.json``); ``python -m flows.cluster down STATE_DIR`` stops it all.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from conf.loading import load_config

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent  # console scripts of this environment (prefect, mlflow, ray)


@dataclass
class Service:
    """One background process (and its children) in its own process group."""

    name: str
    pid: int
    log: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Service:
    """Start ``argv`` in a new session (its own process group), output to ``<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                   cwd=cwd, start_new_session=True)
    return Service(name, process.pid, log, process)


def stop(service: Service, timeout: float = 30.0) -> None:
    """SIGTERM the service's process group, SIGKILL what is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(service.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if service.process is not None:
                service.process.poll()  # reap the leader so the group can vanish
            try:
                os.killpg(service.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def wait_until(service: Service, ready, what: str, timeout: float) -> None:
    """Poll ``ready()`` until true; raise with the service's log tail if it dies or times out.

    Raises:
        RuntimeError: the process exited or ``timeout`` passed first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited before {what}:\n{service.tail()}")
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{service.name}: no {what} after {timeout:.0f} s:\n{service.tail()}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def prefect_env(state_dir: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment of a Prefect server, worker or client that keeps all state in ``state_dir``."""
    home = state_dir / "prefect"
    env = {"PREFECT_HOME": str(home),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_LOGGING_EXTRA_LOGGERS": "spark_jobs,trainers,flows"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def prefect_server(state_dir: Path, port: int, timeout: float = 180) -> tuple[Service, str]:
    """``prefect server start`` on 127.0.0.1:port; returns the service and its API URL."""
    service = start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", HOST,
                                       "--port", str(port)], state_dir / "logs",
                    prefect_env(state_dir))
    api = f"http://{HOST}:{port}/api"
    wait_until(service, lambda: http_ok(f"{api}/health"), "health check", timeout)
    return service, api


def prefect_worker(state_dir: Path, api_url: str, pool: str,
                   env: dict[str, str] | None = None) -> Service:
    """A process worker polling ``pool``; flow runs inherit its environment."""
    return start("prefect-worker", [str(BIN / "prefect"), "worker", "start", "--pool", pool,
                                    "--type", "process"], state_dir / "logs",
                 prefect_env(state_dir, api_url) | (env or {}))


def mlflow_server(state_dir: Path, port: int, timeout: float = 180) -> tuple[Service, str]:
    """An MLflow tracking server with a sqlite store and a local artifact root."""
    service = start("mlflow-server", [
        str(BIN / "mlflow"), "server", "--backend-store-uri",
        f"sqlite:///{state_dir}/mlflow.db", "--default-artifact-root",
        str(state_dir / "mlartifacts"), "--host", HOST, "--port", str(port), "--workers", "1",
    ], state_dir / "logs", {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://{HOST}:{port}"
    wait_until(service, lambda: http_ok(f"{uri}/health"), "health check", timeout)
    return service, uri


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def spark_master(state_dir: Path, port: int, cores: int, memory: str,
                 timeout: float = 120) -> tuple[list[Service], str]:
    """A Spark standalone master and one worker; returns both services and the master URL."""
    env = {"SPARK_LOCAL_IP": HOST, "SPARK_LOG_DIR": str(state_dir / "logs"),
           "SPARK_WORKER_DIR": str(state_dir / "spark-work")}
    master = start("spark-master", [str(spark_class()), "org.apache.spark.deploy.master.Master",
                                    "--host", HOST, "--port", str(port), "--webui-port",
                                    str(free_port())], state_dir / "logs", env)
    url = f"spark://{HOST}:{port}"
    wait_until(master, lambda: port_open(port), f"master on port {port}", timeout)
    worker = start("spark-worker", [str(spark_class()), "org.apache.spark.deploy.worker.Worker",
                                    "--host", HOST, "--cores", str(cores), "--memory", memory,
                                    "--webui-port", str(free_port()), "--work-dir",
                                    str(state_dir / "spark-work"), url], state_dir / "logs", env)
    wait_until(worker, lambda: "Successfully registered with master" in worker.tail(200),
               "registration with the master", timeout)
    return [master, worker], url


def ray_head(state_dir: Path, port: int, cpus: int, worker_niceness: int,
             timeout: float = 180) -> tuple[Service, str, dict[str, str]]:
    """``ray start --head --block`` on 127.0.0.1:port (Ray itself resolves a loopback
    address to the machine's own, so drivers see that address in its messages).

    Ray 2.5x turns on token authentication for ``ray start`` whenever a token exists (e.g. a
    ``~/.ray/auth_token`` left by an earlier run); the head and every driver then need the
    same token. The cluster gets a fresh token of its own, passed by environment
    (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), so nothing is written to the home folder.
    Ray's temp folder holds Unix sockets whose paths must stay under ~107 bytes, so it is a
    short folder in the system temp dir, recorded in ``state_dir/ray-temp`` and removed by
    :func:`down`. Workers run at ``worker_niceness`` (``train.worker_niceness``; Ray's
    default 15 lets the other services starve training on a small box).

    Returns:
        (service, address, environment a driver needs to connect).
    """
    import secrets

    temp = tempfile.mkdtemp(prefix="ray-")
    (state_dir / "ray-temp").write_text(temp)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    service = start("ray-head", [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", HOST,
        "--port", str(port), "--num-cpus", str(cpus), "--include-dashboard=false",
        "--disable-usage-stats", "--temp-dir", temp,
    ], state_dir / "logs", {"RAY_USAGE_STATS_ENABLED": "0",
                            "RAY_worker_niceness": str(worker_niceness)} | auth)
    address = f"{HOST}:{port}"
    wait_until(service, lambda: "Ray runtime started" in service.tail(200), "Ray runtime", timeout)
    return service, address, auth


@dataclass
class Cluster:
    """The running services and the environment that points the ``cluster`` profile at them."""

    state_dir: Path
    services: list[Service]
    env: dict[str, str]  # SEQREC_* for conf/profiles/cluster.yaml, PREFECT_* for clients

    def save(self) -> None:
        (self.state_dir / "pids.json").write_text(json.dumps(
            {"services": [{"name": s.name, "pid": s.pid, "log": str(s.log)}
                          for s in self.services], "env": self.env}, indent=2))


def up(state_dir: Path, pool: str = "seqrec-process", cpus: int = 2,
       spark_memory: str = "2g") -> Cluster:
    """Start every service; on any failure stop what already started and re-raise.

    Returns:
        The cluster; its ``env`` must be in the environment of ``seqrec deploy`` and
        ``prefect deployment run`` (the worker already has it).
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    services: list[Service] = []
    try:
        spark, spark_url = spark_master(state_dir, free_port(), cpus, spark_memory)
        services += spark
        ray, ray_address, ray_auth = ray_head(state_dir, free_port(), cpus,
                                              load_config().train.worker_niceness)
        services.append(ray)
        mlflow, mlflow_uri = mlflow_server(state_dir, free_port())
        services.append(mlflow)
        prefect, api = prefect_server(state_dir, free_port())
        services.append(prefect)
        env = {"SEQREC_SPARK_MASTER": spark_url, "SEQREC_RAY_ADDRESS": ray_address,
               "SEQREC_MLFLOW_URI": mlflow_uri} | ray_auth | prefect_env(state_dir, api)
        services.append(prefect_worker(state_dir, api, pool, env))
    except BaseException:
        down(Cluster(state_dir, services, {}))
        raise
    cluster = Cluster(state_dir, services, env)
    cluster.save()
    return cluster


def down(cluster: Cluster) -> None:
    """Stop every service, newest first, by process group; remove Ray's temp folder."""
    import shutil

    for service in reversed(cluster.services):
        stop(service)
    marker = cluster.state_dir / "ray-temp"
    if marker.exists():
        shutil.rmtree(marker.read_text(), ignore_errors=True)
        marker.unlink()


def _load(state_dir: Path) -> Cluster:
    saved = json.loads((state_dir / "pids.json").read_text())
    services = [Service(s["name"], s["pid"], Path(s["log"])) for s in saved["services"]]
    return Cluster(state_dir, services, saved["env"])


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python -m flows.cluster up|down STATE_DIR", file=sys.stderr)
        return 2
    state_dir = Path(argv[1]).resolve()
    if argv[0] == "up":
        cluster = up(state_dir)
        print("\n".join(f"export {k}={v}" for k, v in cluster.env.items()))
    else:
        down(_load(state_dir))
        (state_dir / "pids.json").unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
