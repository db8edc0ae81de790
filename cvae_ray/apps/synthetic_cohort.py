"""Write large synthetic cohorts to Parquet with Ray Data, reproducibly.

Two steps, so that bad input fails before any Ray work starts:

1. :func:`prepare_cohort` (no Ray): load the bundle, resolve the mix into a
   plan of seeded blocks (:mod:`cvae_ray.apps.cohort_plan`), check the output
   location and create a temporary sibling to write into.
2. :func:`write_cohort` (Ray Data): ``from_items(plan)`` -> ``map_batches``
   with :class:`BlockSampler` (the bundle loaded once per actor, one block of
   ``--block-rows`` rows per decoder pass (by default at most ``BLOCK_ROWS``
   rows and ``BLOCK_VALUES`` values), several blocks at a time,
   each handed on packed as one binary cell: :mod:`cvae_ray.apps.cohort_blocks`)
   -> ``map_batches(unpack_blocks)`` fused by Ray Data into the
   ``write_parquet`` tasks, so the wide table is built where it is written;
   then the row counts are checked from the files, the manifest is written
   and the output is published.

Publishing: a local ``--out`` is renamed into place in one step (the staging
folder is a hidden sibling on the same filesystem). A URI ``--out`` is written
under a hidden sibling prefix, copied into place, and ``_manifest.json`` is
written LAST: on object stores a folder without ``_manifest.json`` is not a
complete cohort.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from pyarrow import fs as pafs

from cvae_ray import __version__
from cvae_ray.apps.allocator import keep_freed_memory
from cvae_ray.apps.cohort_blocks import pack_blocks, unpack_blocks
from cvae_ray.apps.cohort_plan import (
    BLOCK_ROWS,
    CohortPlan,
    default_block_rows,
    make_plan,
)
from cvae_ray.config import COHORT_MIX, DEFAULT_SEED, SCALES
from cvae_ray.errors import CvaeRayError, IncompatibleBundleError, InvalidConfigError
from cvae_ray.model.bundle import ModelBundle, SampleRequest
from cvae_ray.storage import (
    buffered_local_filesystem,
    discard,
    filesystem,
    is_uri,
    local_path,
    publish,
    stage,
)

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = "cvae_ray.cohort"
MANIFEST_VERSION = 1
SCHEMA_KEY = b"cvae_ray.cohort"
SAMPLE_ID = "sample_id"
#: Parquet codecs accepted; snappy is the default (see docs/cohorts.md for the measurements).
COMPRESSIONS = ("snappy", "none", "zstd", "lz4", "gzip")
DEFAULT_COMPRESSION = "snappy"
#: Codec of the gene columns where it differs from the labels' (see parquet_options).
GENE_CODEC = {"snappy": "none", "lz4": "none"}
#: Packed blocks per write task: fewer, larger write tasks pay Ray Data's per-task
#: cost less often (1M rows: 27.9 s with 4, 29.2 s with 2; docs/cohorts.md).
WRITE_BLOCKS = 4


@dataclass
class PreparedCohort:
    """A checked cohort job, ready for Ray: everything decided, nothing sampled yet.

    Attributes:
        bundle_location: Where actors load the bundle from.
        bundle_id: The bundle's content hash.
        genes: Gene columns, in model order.
        plan: Mix counts and seeded blocks.
        scale: ``input`` or ``log``.
        noise: Decoder noise on or off (the bundle's default).
        temperature: Decoder-noise scale (the bundle's default).
        out: The final output location, as given.
        staging: The temporary location written first.
        partition_by: Hive partition columns.
        rows_per_file: Upper bound (and, unpartitioned, target) of rows per file.
        compression: Parquet codec.
        command: The command line, for the record.
    """

    bundle_location: str
    bundle_id: str
    genes: list[str]
    plan: CohortPlan
    scale: str
    noise: bool
    temperature: float
    out: str
    staging: str
    partition_by: list[str] = field(default_factory=list)
    rows_per_file: int | None = None
    compression: str = DEFAULT_COMPRESSION
    overwrite: bool = False
    command: list[str] = field(default_factory=list)

    @property
    def gene_compression(self) -> str:
        """Codec of the gene columns (see :func:`parquet_options`)."""
        return GENE_CODEC.get(self.compression, self.compression)

    @property
    def remote(self) -> bool:
        """Whether the output goes to a URI rather than a local path."""
        return is_uri(self.out)


# ---------------------------------------------------------------------- output location
def discard_staging(prepared: PreparedCohort) -> None:
    """Delete the temporary location (after a failure, or to abandon a prepared job)."""
    discard(prepared.staging)


# ---------------------------------------------------------------------- step 1: no Ray
def prepare_cohort(bundle: str, n: int, out: str, *, mix: str = COHORT_MIX,
                   seed: int = DEFAULT_SEED,
                   scale: str | None = None, partition_by: Sequence[str] = (),
                   rows_per_file: int | None = None, compression: str = DEFAULT_COMPRESSION,
                   overwrite: bool = False, block_rows: int | None = None,
                   allow_unseen: bool = False,
                   command: Sequence[str] | None = None) -> PreparedCohort:
    """Check every argument and create the temporary output location; starts no Ray.

    Args:
        bundle: Model bundle (local path or URI).
        n: Number of samples.
        out: Output folder (local path or URI).
        mix: Condition mix (see :mod:`cvae_ray.apps.cohort_plan`).
        seed: Job seed; with the other arguments it fixes every value.
        scale: ``input`` or ``log`` (default: the bundle's sampling default).
        partition_by: Condition columns to partition the files by (Hive folders).
        rows_per_file: Upper bound of rows per Parquet file.
        compression: Parquet codec, one of :data:`COMPRESSIONS`.
        overwrite: Replace a non-empty ``out``.
        block_rows: Rows per generated block (default:
            :func:`~cvae_ray.apps.cohort_plan.default_block_rows` of the bundle's genes).
        allow_unseen: Generate condition combinations never seen in training (their
            latent codes are composed from the seen ones; the manifest marks them);
            otherwise a mix holding one is refused.
        command: Command line to record.

    Returns:
        The prepared job; call :func:`write_cohort` (or :func:`discard_staging`).

    Raises:
        CvaeRayError: A bad argument, a missing bundle, an unknown condition, a mix that
            does not sum up, an existing or unwritable output; the message names it.
    """
    if not is_uri(bundle) and not local_path(bundle).exists():
        raise IncompatibleBundleError(f"--bundle {bundle!r} does not exist.")
    loaded = ModelBundle.load(bundle)
    scale = loaded.sample_defaults.scale if scale is None else scale
    if scale not in SCALES:
        raise InvalidConfigError(f"scale={scale!r} is not valid; expected one of {SCALES}.")
    if compression not in COMPRESSIONS:
        raise InvalidConfigError(
            f"compression={compression!r} is not valid; expected one of {COMPRESSIONS}.")
    partition_by = list(partition_by)
    for column in partition_by:
        if column not in loaded.condition_columns:
            raise InvalidConfigError(
                f"--partition-by {column!r} is not a condition column; allowed: "
                f"{loaded.condition_columns}.")
    if len(set(partition_by)) != len(partition_by):
        raise InvalidConfigError(f"--partition-by lists a column twice: {partition_by}.")
    if rows_per_file is not None and (not isinstance(rows_per_file, int) or rows_per_file <= 0):
        raise InvalidConfigError(
            f"rows_per_file={rows_per_file!r} is not valid; expected a positive integer.")
    if block_rows is None:
        block_rows = default_block_rows(len(loaded.genes))
    plan = make_plan(n, seed, mix, loaded.vocab, loaded.metadata, block_rows=block_rows,
                     seen=loaded.seen_combinations, allow_unseen=allow_unseen)
    staging = stage(out, overwrite=overwrite)
    return PreparedCohort(
        bundle_location=str(bundle) if is_uri(bundle) else str(local_path(bundle).resolve()),
        bundle_id=loaded.bundle_id, genes=list(loaded.genes), plan=plan, scale=scale,
        noise=loaded.sample_defaults.noise, temperature=loaded.sample_defaults.temperature,
        out=str(out), staging=staging, partition_by=partition_by, rows_per_file=rows_per_file,
        compression=compression, overwrite=overwrite,
        command=list(sys.argv if command is None else command))


# ---------------------------------------------------------------------- schema
def schema_record(prepared: PreparedCohort) -> dict[str, Any]:
    """What every Parquet file's schema metadata records about how it was made."""
    plan = prepared.plan
    return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
            "bundle_id": prepared.bundle_id, "seed": plan.seed, "n": plan.n, "mix": plan.mix,
            "scale": prepared.scale, "noise": prepared.noise,
            "temperature": prepared.temperature, "block_rows": max(b.count for b in plan.blocks),
            "sample_id": "{seed}-{block}-{row in block}", "genes": prepared.genes,
            "package_version": __version__}


def cohort_schema(prepared: PreparedCohort) -> pa.Schema:
    """Arrow schema: sample id, condition columns (strings), one float32 column per gene."""
    fields = [pa.field(SAMPLE_ID, pa.string(), nullable=False)]
    fields += [pa.field(c, pa.string(), nullable=False) for c in prepared.plan.columns]
    fields += [pa.field(g, pa.float32(), nullable=False) for g in prepared.genes]
    return pa.schema(fields, metadata={SCHEMA_KEY: json.dumps(schema_record(prepared))})


# ---------------------------------------------------------------------- the actor
class BlockSampler:
    """Ray Data callable class: loads the bundle once, samples plan rows into packed blocks.

    Each call samples its plan blocks on one torch thread; an actor runs several
    calls at once (:func:`actor_calls`), which keeps its CPUs busy through the
    single-threaded steps (normal draws, inverse preprocessing) as well. A block's
    values are the same whichever actor or thread samples it.

    Args:
        prepared: The prepared job (bundle location, scale, plan).
        device: torch device of this actor.
    """

    def __init__(self, prepared: PreparedCohort, device: str = "cpu") -> None:
        import torch
        from threadpoolctl import threadpool_limits

        # Parallel calls, not intra-op threads: one thread per call is never idle
        # waiting for the other at the end of each operation. BLAS too: the CPU
        # decoder's matrix products run in numpy (cvae_ray.model.folded). This
        # process samples only, so the limit is set for good.
        torch.set_num_threads(1)
        threadpool_limits(limits=1, user_api="blas")
        keep_freed_memory()
        self.bundle = ModelBundle.load(prepared.bundle_location, device=device)
        if self.bundle.bundle_id != prepared.bundle_id:
            raise IncompatibleBundleError(
                f"bundle at {prepared.bundle_location!r} changed while the job ran "
                f"(id {self.bundle.bundle_id}, planned with {prepared.bundle_id}).")
        plan = prepared.plan
        self.scale = prepared.scale
        self.noise = prepared.noise
        self.temperature = prepared.temperature
        self.allow_unseen = plan.allow_unseen
        _, codes = self.bundle.encode_conditions(
            [dict(zip(plan.columns, combo)) for combo in plan.combos])
        self.codes = codes

    def block_values(self, combo: int, count: int, seed: int) -> np.ndarray:
        """Sample one block: genes x samples float32 on the output scale, C-contiguous."""
        codes = np.repeat(self.codes[combo:combo + 1], count, axis=0)
        # Gene-major layout: each gene column is then a contiguous run that Arrow
        # wraps without copying (the transpose is folded into the inverse transform).
        [values] = self.bundle.draw([SampleRequest(codes, int(seed), self.scale,
                                                   allow_unseen=self.allow_unseen)],
                                    noise=self.noise, temperature=self.temperature,
                                    gene_major=True)
        return values

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        values = [self.block_values(int(c), int(k), int(s)) for c, k, s in
                  zip(batch["combo"], batch["count"], batch["seed"])]
        return pack_blocks(batch["index"], batch["combo"], values)


def parquet_options(prepared: PreparedCohort) -> dict[str, Any]:
    """Parquet writer options: dictionaries and statistics for the labels only.

    Random float genes gain nothing from dictionary encoding (pyarrow would try it
    and fall back, at a cost) or from min/max statistics. Nor from the LZ-only codecs
    (snappy, lz4): without entropy coding they cannot shrink float32 noise (the file
    is the same size), so with those the genes are stored uncompressed and only the
    labels get the codec; zstd and gzip do shrink genes and apply to every column.
    """
    labels = [SAMPLE_ID] + [c for c in prepared.plan.columns if c not in prepared.partition_by]
    options = {"compression": {**{c: prepared.compression for c in labels},
                               **{g: prepared.gene_compression for g in prepared.genes}},
               "use_dictionary": [c for c in labels if c != SAMPLE_ID],
               "write_statistics": labels}
    if prepared.compression == "zstd":
        # Level 1: random floats barely compress, higher levels only cost time.
        options["compression_level"] = 1
    return options


# ---------------------------------------------------------------------- step 2: Ray
def _count_rows(prepared: PreparedCohort,
                files: list[dict[str, Any]]) -> dict[tuple[str, ...], int]:
    """Rows per condition combination, read back from the written files (:func:`_files`).

    File by file, each through its own dataset, so the driver holds one parsed
    footer per thread: a dataset over all files keeps every footer, and at 18,154
    genes each footer describes 18,157 column chunks per row group. Each dataset is
    given the schema of the condition columns, so the file's 18,157-field schema is
    not built (49 files of 100,000 x 18,154 on one thread: 3.4 s instead of 7.8 s),
    and the files are read on up to 8 threads, one per usable CPU. A column missing
    from a file reads as nulls, which no planned combination matches.
    """
    fs, path = filesystem(prepared.staging)
    partitioning = (pads.partitioning(pa.schema([(c, pa.string()) for c in prepared.partition_by]),
                                      flavor="hive") if prepared.partition_by else None)
    columns = list(prepared.plan.columns)
    labels = pa.schema([(c, pa.string()) for c in columns])

    def count(file: dict[str, Any]) -> list[dict[str, Any]]:
        dataset = pads.dataset([f"{path.rstrip('/')}/{file['path']}"], schema=labels,
                               filesystem=fs, format="parquet", partitioning=partitioning,
                               partition_base_dir=path)
        return dataset.to_table(columns=columns).group_by(columns).aggregate(
            [([], "count_all")]).to_pylist()

    usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count() or 1)
    counts: dict[tuple[str, ...], int] = {}
    with ThreadPoolExecutor(max_workers=min(8, usable)) as pool:
        for rows in pool.map(count, files):
            for row in rows:
                key = tuple(str(row[c]) for c in columns)
                counts[key] = counts.get(key, 0) + int(row["count_all"])
    return counts


def _files(prepared: PreparedCohort) -> list[dict[str, Any]]:
    fs, path = filesystem(prepared.staging)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(({"path": info.path[len(path):].lstrip("/"), "bytes": info.size}
                   for info in infos if info.type == pafs.FileType.File
                   and info.path.endswith(".parquet")), key=lambda f: f["path"])


def manifest(prepared: PreparedCohort, counts: dict[tuple[str, ...], int],
             files: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``_manifest.json`` record: enough to trust, check and regenerate the cohort."""
    import ray
    import torch

    plan = prepared.plan
    return {
        **{k: v for k, v in schema_record(prepared).items() if k != "genes"},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": prepared.bundle_location,
        "n_genes": len(prepared.genes),
        "genes": prepared.genes,
        "condition_columns": list(plan.columns),
        "columns": [SAMPLE_ID, *plan.columns, *prepared.genes],
        "resolved_mix": plan.resolved_mix(),
        "allow_unseen": plan.allow_unseen,
        "unseen_combinations": [dict(zip(plan.columns, combo)) for combo, flag in
                                zip(plan.combos, plan.unseen) if flag],
        "rows": sum(counts.values()),
        "rows_per_condition": [dict(zip(plan.columns, combo), count=count)
                               for combo, count in sorted(counts.items())],
        "blocks": len(plan.blocks),
        "partition_by": prepared.partition_by,
        "rows_per_file": prepared.rows_per_file,
        "compression": prepared.compression,
        "gene_compression": prepared.gene_compression,
        "files": files,
        "versions": {"cvae_ray": __version__, "ray": ray.__version__,
                     "torch": torch.__version__, "pyarrow": pa.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "command": prepared.command,
    }


def _publish(prepared: PreparedCohort, record: dict[str, Any]) -> None:
    publish(prepared.staging, prepared.out, overwrite=prepared.overwrite,
            last=(MANIFEST, json.dumps(record, indent=1).encode()))


def default_workers(gpu: bool) -> int:
    """Sampling actors when not given: one per GPU, or the CPUs minus one left to the writers."""
    import ray

    resources = ray.cluster_resources()
    if gpu:
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1)) - 1)


def write_blocks(prepared: PreparedCohort) -> int:
    """Plan blocks per write task.

    :data:`WRITE_BLOCKS`, or, unpartitioned with ``rows_per_file``, enough blocks of
    the plan's largest size for one file. Blocks of small combinations hold fewer
    rows, so a task may hold less than one full file; either way a write task's
    memory depends on ``rows_per_file`` and the block size, never on ``n``.
    """
    if prepared.partition_by or prepared.rows_per_file is None:
        return WRITE_BLOCKS
    block_rows = max(block.count for block in prepared.plan.blocks)
    return max(WRITE_BLOCKS, -(-prepared.rows_per_file // block_rows))


def actor_calls(workers: int, gpu: bool) -> int:
    """Blocks each sampling actor works on at once: the cluster's CPUs shared out.

    The Parquet writers need only part of a CPU, so on a small machine (2 CPUs,
    one actor) the actor's second call uses what the writers leave idle. With
    many actors this is 1, one call per reserved CPU. A GPU actor takes one block
    at a time (two would double its GPU memory).
    """
    import ray

    if gpu:
        return 1
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)


def write_cohort(prepared: PreparedCohort, *, workers: int | None = None,
                 gpu: bool = False) -> dict[str, Any]:
    """Generate the planned cohort with Ray Data and publish it (Ray must be initialised).

    Args:
        prepared: From :func:`prepare_cohort`.
        workers: Sampling actors (default: :func:`default_workers`).
        gpu: One GPU per actor.

    Returns:
        The manifest written beside the files.

    Raises:
        CvaeRayError: The files do not hold the planned rows (nothing is published).
    """
    import ray

    if workers is not None and (not isinstance(workers, int) or workers <= 0):
        raise InvalidConfigError(f"workers={workers!r} is not valid; expected a positive integer.")
    workers = workers or default_workers(gpu)
    try:
        items = [asdict(block) for block in prepared.plan.blocks]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        # No block shaping for this job (its own copy of the DataContext): the plan
        # sizes the blocks already, and shaping sizes each output with Table.nbytes,
        # a Python loop over columns and chunks: at 18,154 genes about a third of
        # every write task (py-spy, 2026-12-02).
        dataset.context.target_max_block_size = None
        calls = actor_calls(workers, gpu)
        dataset = dataset.map_batches(
            BlockSampler,
            fn_constructor_kwargs={"prepared": prepared, "device": "cuda" if gpu else "cpu"},
            # One plan block per decoder pass: the grouping never changes the values.
            batch_size=1, batch_format="numpy", zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(
                size=workers, max_concurrent_calls_per_actor=calls,
                enable_true_multi_threading=calls > 1),
            num_cpus=1, num_gpus=1 if gpu else None)
        # A task step: Ray Data fuses it into the write tasks, so the cohort's wide
        # table is built where it is written and never crosses the object store.
        dataset = dataset.map_batches(
            unpack_blocks, fn_kwargs={"schema": cohort_schema(prepared),
                                      "seed": prepared.plan.seed,
                                      "combos": list(prepared.plan.combos)},
            batch_size=write_blocks(prepared), batch_format="pyarrow", zero_copy_batch=True)
        target_fs, path = filesystem(prepared.staging)
        if not prepared.remote:
            target_fs = buffered_local_filesystem()
        options = parquet_options(prepared)
        # No min_rows_per_file: Ray Data would bundle the fused write tasks' input,
        # packed blocks of one row each, up to that many rows (the whole cohort in
        # one task); write_blocks sizes the tasks instead.
        dataset.write_parquet(
            path, filesystem=target_fs, partition_cols=prepared.partition_by or None,
            max_rows_per_file=prepared.rows_per_file,
            arrow_parquet_args_fn=lambda: dict(options))
        files = _files(prepared)
        counts = _count_rows(prepared, files)
        planned = dict(zip(prepared.plan.combos, prepared.plan.counts))
        if counts != planned:
            raise CvaeRayError(f"the written files hold {sum(counts.values())} rows "
                               f"({counts}) instead of the planned {planned}; nothing published.")
        record = manifest(prepared, counts, files)
        _publish(prepared, record)
        return record
    except BaseException:
        discard_staging(prepared)
        raise


def generate_cohort(bundle: str, n: int, out: str, *, workers: int | None = None,
                    gpu: bool = False, **options: Any) -> dict[str, Any]:
    """:func:`prepare_cohort` then :func:`write_cohort` (Ray must be initialised).

    Returns:
        The manifest.
    """
    prepared = prepare_cohort(bundle, n, out, **options)
    return write_cohort(prepared, workers=workers, gpu=gpu)


def read_manifest(out: str) -> dict[str, Any]:
    """Read a published cohort's manifest.

    Raises:
        InvalidConfigError: There is no manifest (the cohort is absent or incomplete).
    """
    fs, path = filesystem(out)
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/{MANIFEST}") as stream:
            return json.loads(stream.read())
    except (FileNotFoundError, OSError) as exc:
        raise InvalidConfigError(f"{out!r} has no {MANIFEST}: not a complete cohort.") from exc


__all__ = ["BLOCK_ROWS", "BlockSampler", "COMPRESSIONS", "MANIFEST", "PreparedCohort",
           "cohort_schema", "discard_staging", "generate_cohort", "manifest", "prepare_cohort",
           "read_manifest", "write_cohort"]
