"""Training data from your own files: layouts, several datasets, dedupe, streaming from disk.

``load_training_data(DataOptions(...))`` scans every ``--data`` item once: each row is
validated (a bad row raises ``DataError`` naming file, line or row, column and the fix)
and only its *position* (byte offset or row number, 8 bytes) and two CRC32 keys of its
anchor and positive text (4 bytes each, for the duplicate rule) stay in memory. A batch
reads its rows from disk on demand, so memory does not grow with the file beyond those
16 bytes per row (plus the epoch's permutation, 8 bytes per row).

``TrainingData.batch(step, batch_size, seed)`` is a pure function of its arguments:
resuming at any step, or sharding a batch over processes, sees exactly the batches of
an uninterrupted single-process run. One dataset without repeated anchors or
positives gives the same batches as ``sampler.batch_indices`` always has.

Text-only data (one text column, no pairs) loads only with ``texts=True``: the trainer
allows it for distillation alone (``--teacher``, ``--loss none``); its batches have no
positives and each text is scored against the batch's other texts.

Hard negatives: a dataset uses ``K`` per anchor, the same for every row; by default the
fewest any of its rows has (logged when rows differ), or ``--negatives-per-anchor K``
(a row with fewer is an error). Rows with more contribute ``K`` of them, drawn from
``(seed, step)``.
"""

from __future__ import annotations

import logging
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmembed.data.errors import DataError
from lmembed.data.formats import Source, dataset_name, open_sources
from lmembed.data.layouts import Example, Layout, parse_columns, resolve_layout
from lmembed.data.mixing import MIXING_HELP, Mixing, parse_mixing
from lmembed.data.sampler import EpochPlan, epoch_plan, steps_per_epoch
from lmembed.options import option

logger = logging.getLogger(__name__)

_SEED_STRIDE = 1_000_003  # dataset i shuffles with seed + i * stride (dataset 0: seed itself)


@dataclass
class DataOptions:
    """Where the training examples come from and how batches are made of them."""

    data: list[str] = option(
        [],
        "training data: .csv/.tsv/.jsonl (also .gz), .parquet, a folder of them, or a hub "
        "dataset id; repeat for several datasets",
        repeat=True,
    )
    columns: str | None = option(
        None,
        "column mapping when the layout is not detected: anchor=COL,positive=COL,"
        "negatives=COL_OR_GLOB (negatives= for pairs; anchor=COL alone: one text column, "
        "for distillation alone)",
    )
    mixing: str = option("proportional", f"several datasets, one per batch: {MIXING_HELP}")
    negatives_per_anchor: int | None = option(
        None, "hard negatives per anchor (default: as many as every row has); 0 = none"
    )
    dedupe: bool = option(
        True, "keep examples sharing an anchor or positive text out of the same batch"
    )
    limit: int | None = option(None, "use only the first N examples of each dataset")

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        self.data = [str(item) for item in self.data]
        if isinstance(self.columns, dict):  # YAML may give the mapping as a mapping
            pairs = self.columns.items()
            self.columns = ",".join(f"{role}={column or ''}" for role, column in pairs)
        parse_columns(self.columns)
        parse_mixing(self.mixing)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive number of rows, got {self.limit}")
        if self.negatives_per_anchor is not None and self.negatives_per_anchor < 0:
            raise ValueError(f"negatives_per_anchor must be >= 0, got {self.negatives_per_anchor}")


@dataclass(frozen=True)
class Batch:
    """One step's examples, all from ``dataset``; every anchor has the same number of
    negatives (``negatives[i]``), so flattened row-major anchor ``i`` owns rows
    ``i*K .. i*K+K-1``. ``positives`` is ``None`` for text-only data (``anchors`` are the
    texts)."""

    anchors: list[str]
    positives: list[str] | None
    negatives: list[list[str]]
    dataset: str

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def negatives_per_anchor(self) -> int:
        return len(self.negatives[0]) if self.negatives else 0

    def flat_negatives(self) -> list[str]:
        return [text for row in self.negatives for text in row]

    def shard(self, sizes: Sequence[int], rank: int) -> Batch:
        """Rank ``rank``'s contiguous part when the batch is split into ``sizes``."""
        if sum(sizes) != len(self):
            raise ValueError(f"shard sizes {list(sizes)} do not add up to {len(self)}")
        start = sum(sizes[:rank])
        part = slice(start, start + sizes[rank])
        positives = None if self.positives is None else self.positives[part]
        return Batch(self.anchors[part], positives, self.negatives[part], self.dataset)


@dataclass
class _Part:
    source: Source
    layout: Layout
    positions: np.ndarray


@dataclass
class Dataset:
    """One ``--data`` item, indexed: where each example lives, and its dedupe keys."""

    name: str
    spec: str
    index: int
    parts: list[_Part]
    anchor_keys: np.ndarray
    positive_keys: np.ndarray
    negatives: int
    counts: dict[str, Any] = field(default_factory=dict)
    texts_only: bool = False
    _plans: dict[tuple[int, int, int, bool], EpochPlan] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.anchor_keys)

    def steps_per_epoch(self, batch_size: int) -> int:
        return steps_per_epoch(len(self), batch_size)

    def plan(self, batch_size: int, seed: int, epoch: int, dedupe: bool) -> EpochPlan:
        key = (batch_size, seed, epoch, dedupe)
        if key not in self._plans:
            keys = (self.anchor_keys, self.positive_keys) if dedupe else ()
            order_seed = seed + self.index * _SEED_STRIDE
            self._plans = {key: epoch_plan(len(self), batch_size, order_seed, epoch, keys)}
        return self._plans[key]

    def indices(self, step: int, batch_size: int, seed: int, dedupe: bool) -> list[int]:
        """Example indices of this dataset's own ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch(batch_size))
        return self.plan(batch_size, seed, epoch, dedupe).batches[position].tolist()

    def examples(self, indices: Sequence[int]) -> list[Example]:
        """The examples at ``indices``, read from disk, in that order."""
        bounds = np.cumsum([0] + [len(p.positions) for p in self.parts])
        owner = np.searchsorted(bounds, indices, side="right") - 1
        out: list[Example | None] = [None] * len(indices)
        for number, part in enumerate(self.parts):
            slots = np.flatnonzero(owner == number)
            if not len(slots):
                continue
            local = np.asarray(indices)[slots] - bounds[number]
            records = part.source.fetch(part.positions[local].tolist(), part.layout.columns)
            for slot, record in zip(slots, records, strict=True):
                out[slot] = part.layout.example(record, part.source.name, 0, part.source.unit)
        return out  # type: ignore[return-value]


class TrainingData:
    """All datasets of a run and the batch schedule over them."""

    def __init__(self, datasets: list[Dataset], mixing: str, dedupe: bool) -> None:
        self.datasets = datasets
        self.mixing = mixing
        self.dedupe = dedupe
        self.names = [d.name for d in datasets]
        Mixing.build(mixing, self.names, [1] * len(datasets))  # validates the names now

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def steps_per_epoch(self, batch_size: int) -> int:
        return sum(d.steps_per_epoch(batch_size) for d in self.datasets)

    def smallest_batch(self, batch_size: int) -> int:
        """The fewest examples a batch holds (some dataset's last batch of an epoch), for the
        multi-process check that every rank gets one. Dedupe may leave a batch shorter only
        when one text repeats more often than the epoch has batches."""
        return min(len(d) - (d.steps_per_epoch(batch_size) - 1) * batch_size for d in self.datasets)

    def schedule(self, batch_size: int) -> Mixing:
        batches = [d.steps_per_epoch(batch_size) for d in self.datasets]
        return Mixing.build(self.mixing, self.names, batches)

    def locate(self, step: int, batch_size: int, seed: int) -> tuple[Dataset, list[int]]:
        """The dataset of global ``step`` and the example indices of its batch."""
        owner, local = self.schedule(batch_size).locate(step, seed)
        dataset = self.datasets[owner]
        return dataset, dataset.indices(local, batch_size, seed, self.dedupe)

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        """The batch of ``step``: a pure function of (seed, step, batch_size)."""
        dataset, indices = self.locate(step, batch_size, seed)
        examples = dataset.examples(indices)
        rng = np.random.default_rng([seed % 2**64, step, dataset.index])
        negatives = [_pick(e.negatives, dataset.negatives, rng) for e in examples]
        positives = None if dataset.texts_only else [e.positive for e in examples]
        return Batch([e.anchor for e in examples], positives, negatives, dataset.name)

    def summary(self, batch_size: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Counts for the log; with ``batch_size``, what dedupe does in each first epoch."""
        rows = []
        for d in self.datasets:
            row = {"name": d.name, "source": d.spec, "examples": len(d), **d.counts}
            row["negatives_per_anchor"] = d.negatives
            if batch_size:
                plan = d.plan(batch_size, seed, 0, self.dedupe)
                row["deferred_duplicates_epoch0"] = plan.deferred
                row["left_out_epoch0"] = plan.left_out
            rows.append(row)
        return {"examples": len(self), "mixing": self.mixing, "dedupe": self.dedupe,
                "datasets": rows}  # fmt: skip

    def log_summary(self, batch_size: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Log ``summary``'s rows, and return it (a run writes it to ``data.json``)."""
        summary = self.summary(batch_size, seed)
        for row in summary["datasets"]:
            logger.info("training data %s", ", ".join(f"{k}={v}" for k, v in row.items()))
        return summary


def load_training_data(options: DataOptions, texts: bool = False) -> TrainingData:
    """Index every dataset of ``options``; raises ``DataError`` on bad input. ``texts``
    allows text-only data (one text column, no pairs)."""
    if not options.data:
        raise ValueError("give training data (--data FILE, repeatable)")
    mapping = parse_columns(options.columns)
    names = _unique_names(options.data)
    datasets = [
        index_dataset(spec, name, i, mapping, options.limit, options.negatives_per_anchor, texts)
        for i, (spec, name) in enumerate(zip(options.data, names, strict=True))
    ]
    data = TrainingData(datasets, options.mixing, options.dedupe)
    data.log_summary()
    return data


def index_dataset(
    spec: str,
    name: str,
    index: int,
    mapping: dict[str, str],
    limit: int | None = None,
    negatives_per_anchor: int | None = None,
    texts: bool = False,
) -> Dataset:
    """Scan ``spec`` once: validate every row, keep positions and dedupe keys (``texts``:
    text-only tables are allowed; see ``resolve_layout``)."""
    anchor_keys, positive_keys = array("I"), array("I")
    parts, blank, unused, fewest, most = [], 0, 0, None, 0
    for source in open_sources(spec):
        layout = resolve_layout(source.columns, mapping, source.name, source.unit, texts)
        _check_same_kind(parts, layout, source.name)
        positions = array("q")
        for line, record, position in source.scan(layout.columns):
            if record is None:
                blank += 1
                continue
            example = layout.example(record, source.name, line, source.unit)
            count = len(example.negatives)
            if layout.negatives and negatives_per_anchor and count < negatives_per_anchor:
                raise DataError(
                    source.name,
                    f"{count} negative(s), fewer than --negatives-per-anchor "
                    f"{negatives_per_anchor}",
                    line=line,
                    unit=source.unit,
                    hint="lower --negatives-per-anchor, or give this row more negatives",
                )
            if fewest is None or count < fewest[0]:
                fewest = (count, source.name, line, source.unit)
            most = max(most, count)
            unused += example.unused_positives
            positions.append(position)
            anchor_keys.append(zlib.crc32(example.anchor.encode("utf-8")))
            positive_keys.append(zlib.crc32((example.positive or example.anchor).encode("utf-8")))
            if limit is not None and len(anchor_keys) >= limit:
                break
        parts.append(_Part(source, layout, np.frombuffer(positions, dtype=np.int64)))
        if limit is not None and len(anchor_keys) >= limit:
            break
    if not anchor_keys:
        raise DataError(spec, "no data rows", hint="expected a header row and one example per row")
    available = fewest[0] if fewest else 0
    k = available if negatives_per_anchor is None else min(negatives_per_anchor, available)
    counts = {"layout": "; ".join(sorted({p.layout.describe() for p in parts}))}
    counts |= {"blank_lines": blank, "unused_positives": unused}
    if negatives_per_anchor is None and fewest and most > fewest[0]:
        where = f"{fewest[1]}, {fewest[3]} {fewest[2]}"
        counts["negatives_per_row"] = f"{fewest[0]}-{most} (fewest at {where})"
        logger.info(
            "%s: rows have %d-%d hard negatives; each anchor uses %d, the fewest (%s); "
            "--negatives-per-anchor picks another count",
            name, fewest[0], most, k, where,
        )  # fmt: skip
    _log_dataset(name, len(anchor_keys), blank, unused)
    return Dataset(
        name,
        spec,
        index,
        [p for p in parts if len(p.positions)],
        np.frombuffer(anchor_keys, dtype=np.uint32),
        np.frombuffer(positive_keys, dtype=np.uint32),
        k,
        counts,
        texts_only=bool(parts) and parts[0].layout.positive is None,
    )


def _check_same_kind(parts: list[_Part], layout: Layout, source: str) -> None:
    """One dataset's files are all pairs or all text-only: a batch comes from one dataset."""
    if parts and (parts[0].layout.positive is None) != (layout.positive is None):
        raise DataError(
            source,
            f"{layout.describe()}, but {parts[0].source.name} is {parts[0].layout.describe()}",
            hint="keep text-only files and pair files in separate --data items",
        )


def _log_dataset(name: str, n: int, blank: int, unused: int) -> None:
    if blank:
        logger.info("%s: skipped %d blank line(s)", name, blank)
    if unused:
        logger.info(
            "%s: %d extra positive(s) unused (the first of each list is taken)", name, unused
        )
    logger.info("%s: indexed %d examples", name, n)


def _pick(negatives: tuple[str, ...], k: int, rng: np.random.Generator) -> list[str]:
    if k >= len(negatives):
        return list(negatives[:k])
    return [negatives[i] for i in sorted(rng.choice(len(negatives), k, replace=False))]


def _unique_names(specs: Sequence[str]) -> list[str]:
    names = [dataset_name(s) for s in specs]
    names = [s if names.count(n) > 1 else n for n, s in zip(names, specs, strict=True)]
    return [n if names[:i].count(n) == 0 else f"{n}#{names[:i].count(n) + 1}"
            for i, n in enumerate(names)]  # fmt: skip
