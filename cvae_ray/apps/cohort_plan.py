"""Plan a synthetic cohort: parse the condition mix, resolve counts, cut seeded blocks.

No Ray (the look-up of combinations seen in training is the model bundle's):
everything here runs in the driver before any Ray work starts, so bad input fails
fast with a message, and the plan can be tested on its own. :mod:`cvae_ray.apps.synthetic_cohort` turns the plan into a Ray Data pipeline.

Mix syntax (``--mix``):

* ``train`` - the condition mix of the bundle's training split
  (``metadata["training"]["train_condition_counts"]``).
* ``balanced`` - equal counts across the condition combinations seen in
  training (the model has never seen the others, e.g. a tissue only GTEx has
  under ``source=TCGA``); falls back to ``product`` when the bundle has no
  training record.
* ``product`` - equal counts across every combination of the condition values.

A mix that holds a combination never seen in training (``product`` usually does)
is refused unless ``allow_unseen`` is set; the plan then marks those combinations
(:attr:`CohortPlan.unseen`, ``"unseen"`` in the manifest's ``resolved_mix``).
* explicit - ``col=value,col=value:WEIGHT;col=value,...:WEIGHT``: every entry
  names a value for every condition column; the weights are either fractions
  summing to 1 or integer counts summing to ``n``.
* a path to a JSON file holding a list of objects, each with the condition
  columns and ``"fraction"`` or ``"count"``, e.g.
  ``[{"tissue": "lung", "source": "GTEx", "fraction": 0.4}, ...]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from cvae_ray.data.conditions import Vocabulary
from cvae_ray.errors import InvalidConfigError, UnknownConditionError
from cvae_ray.model.bundle import (
    describe_combinations,
    recorded_seen,
    seen_lookup,
    unseen_in,
)

#: Rows per generated block at most: big enough that per-block overhead vanishes,
#: small enough that an actor holds only a few tens of MB (10k x 1,000 float32 = 40 MB).
BLOCK_ROWS = 10_000
#: Values (rows x genes) per generated block at most, so that a wide model's blocks
#: stay the size of a 1,000-gene model's (40 MB of float32): at 18,154 genes a
#: 10,000-row block would be 726 MB per copy, and a 100,000-sample cohort only ten
#: blocks to spread over the actors and writers.
BLOCK_VALUES = 10_000_000


def default_block_rows(n_genes: int) -> int:
    """Rows per block when none are given: :data:`BLOCK_ROWS`, fewer for wide models.

    Args:
        n_genes: Genes of the bundle.

    Returns:
        ``min(BLOCK_ROWS, BLOCK_VALUES // n_genes)``, at least 1: 10,000 up to 1,000
        genes, 550 at 18,154.
    """
    return max(1, min(BLOCK_ROWS, BLOCK_VALUES // max(1, int(n_genes))))

NAMED_MIXES = ("train", "balanced", "product")
_FRACTION_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Block:
    """One unit of work: ``count`` samples of one condition combination.

    Attributes:
        index: Block number (0-based, stable: it is part of the sample ids).
        combo: Index into :attr:`CohortPlan.combos`.
        count: Samples in this block.
        seed: Sampling seed of this block, derived from the job seed and ``index``.
    """

    index: int
    combo: int
    count: int
    seed: int


@dataclass(frozen=True)
class CohortPlan:
    """Everything that decides a cohort's values, fixed before any sampling.

    Attributes:
        n: Total number of samples.
        seed: Job seed.
        columns: Condition column names (model order).
        combos: Condition combinations (values in column order) with a positive count.
        counts: Samples per combination, aligned with ``combos``; sums to ``n``.
        blocks: Work units, ``block_rows`` samples at most each.
        mix: The mix specification as given (for the record).
        unseen: Per combination, whether it was never seen in training (all False
            when the seen combinations are unknown).
        allow_unseen: Whether unseen combinations were allowed.
    """

    n: int
    seed: int
    columns: tuple[str, ...]
    combos: tuple[tuple[str, ...], ...]
    counts: tuple[int, ...]
    blocks: tuple[Block, ...]
    mix: str
    unseen: tuple[bool, ...] = ()
    allow_unseen: bool = False

    def resolved_mix(self) -> list[dict[str, Any]]:
        """The counts per combination as JSON-ready records (for the manifest), each with
        ``unseen``: whether the combination was never seen in training."""
        unseen = self.unseen or (False,) * len(self.combos)
        return [dict(zip(self.columns, combo), count=count, unseen=bool(flag))
                for combo, count, flag in zip(self.combos, self.counts, unseen)]


def check_n(n: Any) -> int:
    """Refuse anything but a positive integer sample count.

    Raises:
        InvalidConfigError: Naming the bad value.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise InvalidConfigError(f"n={n!r} is not valid; expected a positive integer.")
    return int(n)


def check_seed(seed: Any) -> int:
    """Refuse anything but an integer seed >= 0.

    Raises:
        InvalidConfigError: Naming the bad value.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InvalidConfigError(f"seed={seed!r} is not valid; expected an integer >= 0.")
    return int(seed)


def block_seed(seed: int, index: int) -> int:
    """Independent 63-bit seed of block ``index`` of a job seeded with ``seed``.

    ``SeedSequence`` hashes (seed, index) so neighbouring blocks and jobs get
    unrelated streams; 63 bits keep the value valid for ``torch.Generator``.
    """
    words = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return int((int(words[0]) << 32 | int(words[1])) & (2 ** 63 - 1))


def _split(n: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder split of ``n`` in proportion to ``weights`` (deterministic)."""
    total = float(sum(weights))
    exact = [n * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    # Ties go to the earlier entry, so the result depends only on the inputs.
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _check_combo(entry: Mapping[str, Any], vocab: Mapping[str, Sequence[str]],
                 where: str) -> tuple[str, ...]:
    """A mix entry's values in the trained spellings (read as at fit time).

    Raises:
        UnknownConditionError: An unknown or missing column, or an unknown value.
    """
    vocabulary = Vocabulary(vocab)
    vocabulary.check_columns(list(entry), where)
    return tuple(vocabulary.levels[column][vocabulary.codes(column, [entry[column]], where)[0]]
                 for column in vocabulary.columns)


def _parse_explicit(spec: str) -> list[tuple[dict[str, str], str]]:
    entries = []
    for k, part in enumerate(p.strip() for p in spec.split(";")):
        if not part:
            continue
        conditions, sep, weight = part.rpartition(":")
        if not sep or not conditions:
            raise InvalidConfigError(
                f"mix entry {part!r} has no weight; expected 'col=value,col=value:WEIGHT' "
                f"(WEIGHT a fraction or a count), entries separated by ';'.")
        mapping: dict[str, str] = {}
        for pair in conditions.split(","):
            column, eq, value = pair.partition("=")
            if not eq or not column.strip() or not value.strip():
                raise InvalidConfigError(
                    f"mix entry {part!r}: {pair!r} is not 'column=value'.")
            if column.strip() in mapping:
                raise InvalidConfigError(
                    f"mix entry {part!r} names column {column.strip()!r} twice.")
            mapping[column.strip()] = value.strip()
        entries.append((mapping, weight.strip()))
    if not entries:
        raise InvalidConfigError(f"mix {spec!r} has no entries.")
    return entries


def _parse_json(path: Path) -> list[tuple[dict[str, str], str]]:
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidConfigError(f"mix file {str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(records, list) or not records or not all(
            isinstance(r, dict) for r in records):
        raise InvalidConfigError(
            f"mix file {str(path)!r} must hold a non-empty list of objects such as "
            f'{{"tissue": "lung", "source": "GTEx", "fraction": 0.4}}.')
    entries = []
    for record in records:
        keys = [k for k in ("fraction", "count") if k in record]
        if len(keys) != 1:
            raise InvalidConfigError(
                f"mix file {str(path)!r}: entry {record} needs exactly one of 'fraction' or "
                f"'count'.")
        rest = {k: v for k, v in record.items() if k != keys[0]}
        entries.append((rest, str(record[keys[0]])))
    return entries


def _weights_to_counts(weights: list[str], n: int, spec: str) -> list[int]:
    try:
        numbers = [float(w) for w in weights]
    except ValueError:
        raise InvalidConfigError(
            f"mix {spec!r}: weights {weights} must be numbers (fractions summing to 1 or "
            f"counts summing to n={n}).") from None
    if any(not math.isfinite(x) or x < 0 for x in numbers):
        raise InvalidConfigError(f"mix {spec!r}: weights {weights} must be finite and >= 0.")
    integral = all(w.lstrip("+").isdigit() for w in weights)
    if integral and sum(int(w) for w in weights) == n:
        return [int(w) for w in weights]
    if abs(sum(numbers) - 1.0) <= _FRACTION_TOLERANCE:
        return _split(n, numbers)
    raise InvalidConfigError(
        f"mix {spec!r} does not sum up: weights sum to {sum(numbers):g}; expected fractions "
        f"summing to 1 or integer counts summing to n={n}.")


def resolve_mix(mix: str, n: int, vocab: Mapping[str, Sequence[str]],
                metadata: Mapping[str, Any]) -> tuple[list[tuple[str, ...]], list[int]]:
    """Turn a mix specification into counts per condition combination.

    Args:
        mix: ``train``, ``balanced``, ``product``, an explicit mix or a JSON file path.
        n: Total number of samples.
        vocab: Condition column -> allowed values (the bundle's).
        metadata: The bundle's metadata (for the training mix).

    Returns:
        Combinations (values in column order) and their counts (summing to ``n``;
        combinations with a zero count are left out).

    Raises:
        InvalidConfigError: Unparseable mix, weights that do not sum up, no training record.
        UnknownConditionError: A column or value the bundle does not know (lists the allowed).
    """
    columns = list(vocab)
    spec = str(mix).strip()
    if spec in ("train", "balanced"):
        table = recorded_seen(metadata, Vocabulary(vocab))
        if table is None and spec == "train":
            raise InvalidConfigError(
                "mix 'train' needs the training mix recorded in the bundle "
                "(metadata['training']['train_condition_counts']); this bundle has none. Use "
                "--mix balanced, --mix product or an explicit mix.")
        if table is not None:
            combos = [tuple(row) for row in table[columns].itertuples(index=False)]
            weights = table["count"].astype(float).tolist() if spec == "train" else [1.0] * len(combos)
        else:
            spec = "product"
    if spec == "product":
        grid = pd.MultiIndex.from_product([list(vocab[c]) for c in columns])
        combos = [tuple(str(v) for v in (row if isinstance(row, tuple) else (row,)))
                  for row in grid]
        weights = [1.0] * len(combos)
    if spec not in NAMED_MIXES:
        path = Path(spec)
        entries = (_parse_json(path) if spec.endswith(".json") or path.is_file()
                   else _parse_explicit(spec))
        combos = [_check_combo(m, vocab, f"mix entry {m}") for m, _ in entries]
        duplicated = sorted({c for c in combos if combos.count(c) > 1})
        if duplicated:
            raise InvalidConfigError(f"mix {spec!r} lists {dict(zip(columns, duplicated[0]))} "
                                     f"more than once.")
        counts = _weights_to_counts([w for _, w in entries], n, spec)
    else:
        counts = _split(n, weights)
    kept = [(c, k) for c, k in zip(combos, counts) if k > 0]
    return [c for c, _ in kept], [k for _, k in kept]


def check_unseen(combos: Sequence[tuple[str, ...]], vocabulary: Vocabulary,
                 seen: pd.DataFrame | None, allow_unseen: bool, mix: str) -> tuple[bool, ...]:
    """Which combinations of a mix were never seen in training; refuse them unless allowed.

    The look-up and the list of seen combinations are the model bundle's
    (:func:`~cvae_ray.model.bundle.seen_lookup`,
    :func:`~cvae_ray.model.bundle.describe_combinations`).

    Args:
        combos: The mix's combinations (trained values in column order).
        vocabulary: The bundle's condition vocabularies.
        seen: The combinations seen in training, in the order to name them (condition
            columns, as :attr:`ModelBundle.seen_combinations`); ``None``: unknown,
            nothing refused.
        allow_unseen: Accept unseen combinations.
        mix: The mix specification (for the message).

    Returns:
        One flag per combination.

    Raises:
        UnknownConditionError: Unseen combinations without ``allow_unseen``; names them
            and lists the seen ones.
    """
    if seen is None or not combos:
        return (False,) * len(combos)
    columns = vocabulary.columns
    codes = vocabulary.encode(pd.DataFrame(list(combos), columns=columns))
    unseen = tuple(bool(flag) for flag in unseen_in(seen_lookup(vocabulary, seen), codes))
    if any(unseen) and not allow_unseen:
        missing = [dict(zip(columns, c)) for c, flag in zip(combos, unseen) if flag]
        raise UnknownConditionError(
            f"mix {mix!r} holds {len(missing)} condition combination(s) never seen in "
            f"training, e.g. {missing[:3]}; the model has no data for them. Generate them only "
            f"on purpose with --allow-unseen (allow_unseen=True; the manifest marks them), or "
            f"use --mix balanced (every seen combination). Seen combinations: "
            f"{describe_combinations(seen, columns, counts=False)}.")
    return unseen


def make_plan(n: int, seed: int, mix: str, vocab: Mapping[str, Sequence[str]],
              metadata: Mapping[str, Any], block_rows: int = BLOCK_ROWS, *,
              seen: pd.DataFrame | None = None, allow_unseen: bool = False) -> CohortPlan:
    """Resolve the mix and cut it into seeded blocks.

    Blocks are numbered in combination order, so the same arguments always give
    the same blocks, seeds and sample ids, however Ray schedules them.

    Args:
        n: Total number of samples.
        seed: Job seed.
        mix: Mix specification (see the module docstring).
        vocab: Condition column -> allowed values (the bundle's).
        metadata: The bundle's metadata (for the training mix).
        block_rows: Rows per block at most.
        seen: Combinations seen in training (:attr:`ModelBundle.seen_combinations`);
            default: those of the training record in ``metadata`` (none recorded: unknown).
        allow_unseen: Accept combinations never seen in training.

    Raises:
        InvalidConfigError: Bad ``n``, seed, block size or mix.
        UnknownConditionError: Unknown condition column or value in the mix, or a
            combination never seen in training without ``allow_unseen``.
    """
    n, seed = check_n(n), check_seed(seed)
    if not isinstance(block_rows, int) or block_rows <= 0:
        raise InvalidConfigError(f"block_rows={block_rows!r} is not valid; expected a "
                                 f"positive integer.")
    combos, counts = resolve_mix(mix, n, vocab, metadata)
    vocabulary = Vocabulary(vocab)
    if seen is None:
        seen = recorded_seen(metadata, vocabulary)
    unseen = check_unseen(combos, vocabulary, seen, allow_unseen, str(mix))
    blocks = []
    for c, count in enumerate(counts):
        # Equal-sized blocks per combination rather than one small remainder block.
        pieces = -(-count // block_rows)
        for size in _split(count, [1.0] * pieces):
            index = len(blocks)
            blocks.append(Block(index=index, combo=c, count=size, seed=block_seed(seed, index)))
    return CohortPlan(n=n, seed=seed, columns=tuple(vocab), combos=tuple(combos),
                      counts=tuple(counts), blocks=tuple(blocks), mix=str(mix), unseen=unseen,
                      allow_unseen=bool(allow_unseen))
