"""The one way the project starts or joins Ray.

Three shapes, for three kinds of caller:

* :func:`init_ray` / :func:`ray_session`: join the cluster named by an address or
  ``$RAY_ADDRESS`` (as ``ray job submit`` sets it), or else start a Ray inside this
  process tree; jobs, benchmarks and tests use it.
* :func:`local_cluster`: a separate one-node cluster (``ray start --head --block``)
  that outlives individual drivers, for pipelines that submit several jobs to it
  (the demo) and tests of the job-submission path.

A Ray started here always listens on loopback only (127.0.0.1), so its ports are
never exposed on the network, and ``address="local"`` never attaches to another
Ray that happens to run on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import ray

from cvae_ray.errors import CvaeRayError

LOOPBACK = "127.0.0.1"
#: How long :func:`local_cluster` waits for ``ray status`` to answer, in seconds.
CLUSTER_START_TIMEOUT_S = 120


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             **kwargs: Any) -> bool:
    """Join a running cluster, or start a local Ray; return whether this call started it.

    Args:
        address: Cluster address (``HOST:PORT``, ``auto``, ``ray://...``); default
            ``$RAY_ADDRESS``. An ``http(s)://`` address is a job's dashboard address
            (the one given to ``ray job submit``): the driver then runs on a cluster
            node and joins it with ``auto``. ``"local"`` (or no address at all) starts
            a new Ray here, whatever ``$RAY_ADDRESS`` says.
        num_cpus: CPUs of a Ray started here (default: all of the machine's).
        **kwargs: Passed to ``ray.init`` (e.g. ``include_dashboard``, ``logging_level``).

    Returns:
        ``True`` if a new local Ray was started (the caller shuts it down), ``False``
        if Ray was already initialised or an existing cluster was joined.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address="auto" if address.startswith(("http://", "https://")) else address,
                 **kwargs)
        return False
    ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, **kwargs)
    return True


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                **kwargs: Any) -> Iterator[bool]:
    """:func:`init_ray` for a block; a Ray started here (and its Serve) is shut down after.

    Yields:
        Whether the block started its own Ray.
    """
    started = init_ray(address, num_cpus=num_cpus, **kwargs)
    try:
        yield started
    finally:
        if started:
            if "ray.serve" in sys.modules:
                from ray import serve

                serve.shutdown()
            ray.shutdown()


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@contextmanager
def local_cluster(num_cpus: int = 2) -> Iterator[str]:
    """Start a one-node Ray cluster on loopback and stop only it afterwards.

    Token authentication is on, with a fresh token placed in this process's
    environment, so the cluster, every job started from here and this process's own
    ``ray.init`` share it (and nothing else on the machine can use the cluster). The
    cluster keeps its files in its own temporary directory, so it neither reads nor
    overwrites the machine-wide "current cluster" record that a bare ``ray.init()``
    follows, and that record never names this cluster once it is gone.

    Args:
        num_cpus: CPUs the cluster offers.

    Yields:
        The cluster's GCS address (``127.0.0.1:PORT``).

    Raises:
        CvaeRayError: The cluster did not answer within ``CLUSTER_START_TIMEOUT_S``.
    """
    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    _reload_auth_settings()
    port, dashboard = free_port(), free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # Short on purpose: Ray's Unix socket paths live below it (107-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="cvae-ray-", dir="/tmp")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--temp-dir", temp_dir,
         "--node-ip-address", LOOPBACK, "--port", str(port), "--num-cpus", str(num_cpus),
         "--dashboard-host", LOOPBACK, "--dashboard-port", str(dashboard),
         "--disable-usage-stats"],
        env=dict(os.environ), start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT)
    address = f"{LOOPBACK}:{port}"
    try:
        deadline = time.time() + CLUSTER_START_TIMEOUT_S
        while subprocess.run([ray_cli, "status", "--address", address], env=dict(os.environ),
                             capture_output=True).returncode != 0:
            if head.poll() is not None or time.time() > deadline:
                raise CvaeRayError("the local Ray cluster did not start (see `ray start --head`).")
            time.sleep(2)
        yield address
    finally:
        # Only this cluster's process group: a bare `ray stop` would kill others' too.
        stop_process_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_auth_settings()


def _reload_auth_settings() -> None:
    """Make this process's Ray read ``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN`` again.

    Ray caches its settings, the authentication mode among them, the first time a
    process reads them, which may be before :func:`local_cluster` sets the token: this
    process's own ``ray.init`` would then connect without it and be refused
    (``InvalidAuthToken``). The same two calls Ray makes when it turns token
    authentication on itself (``ray._private.authentication``, Ray 2.60).
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def stop_process_group(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its whole group;
    SIGKILL the group if it has not exited after ``timeout`` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
