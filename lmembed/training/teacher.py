"""A teacher's embeddings for distillation: computed once per distinct text, cached on disk.

The teacher is any model ``lmembed eval --model`` takes (``resolve_spec``: a packaged alias
such as ``all-minilm-l6-v2``, a folder, a merged export, a model plus ``--teacher-adapter``,
or an lmembed adapter folder given as the model), with its own prompts, pooling and length.

``prepare_teacher`` runs before step 1. It walks every batch the run will train on (a pure
function of (seed, step)), keeps each distinct text once, in order of first appearance (a
text and the teacher's prompt template for its role: anchors are queries, positives and
negatives documents, text-only data takes the plain prompt), cuts that sequence into fill
groups of ``GROUP_PASSES x --teacher-batch-size`` texts, and embeds, in inference mode, the
groups the cache lacks. Training steps then only look vectors up. Its seconds count in the
run's training time (``TrainResult.teacher_seconds`` of ``seconds``).

The cache is ``cache_root()/teacher/<fingerprint>/``: one folder per teacher (its resolved
spec and the sizes and times of its files, so a retrained adapter gets a new one), shared by
every run with that teacher. Each filled group is one part: ``part-ID.npy`` (float32
vectors), then ``part-ID.keys.npy`` (a 16-byte BLAKE2 key per text), each written
atomically; a part exists once its keys file does. A crash mid-fill loses at most the group
in flight, and the next run (or ``--resume``) embeds only what is missing.

Groups are also the unit of determinism: a group's texts are embedded together, in the
same length-sorted passes, whatever the cache already held, so a run killed mid-fill and
resumed gets the vectors an uninterrupted fill gets, bit for bit. Under ``torchrun`` rank
``r`` of ``W`` fills groups ``r, r + W, ...``; the cache folder must be one that every
process sees (one machine: it is; several: ``LMEMBED_CACHE`` on a shared filesystem, as
``--output`` must be).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from lmembed.faults import fault_point
from lmembed.io import atomic_write_json, atomic_write_npy, cache_root, folder_fingerprint
from lmembed.losses.distillation import DistillKind, TeacherRows
from lmembed.model.embedder import Embedder
from lmembed.model.resolve import resolve_spec
from lmembed.model.spec import SPEC_FILE, DType, EmbeddingSpec, Role
from lmembed.options import check_choices, option
from lmembed.training.checkpoint import rng_states, set_rng_states
from lmembed.training.distributed import Distributed, barrier, gather_objects

logger = logging.getLogger("lmembed")

GROUP_PASSES = 16  # teacher forward passes per fill group (one cache part)
KEY_BYTES = 16
# (anchors, positives, negatives): positives None for text-only data, negatives None for none
BatchTexts = tuple[list[str], list[str] | None, list[str] | None]


@dataclass
class DistillOptions:
    """Distillation from a teacher embedder (docs/training.md, "Distillation from a teacher")."""

    teacher: str | None = option(
        None,
        "distil from this embedder: any model `lmembed eval --model` takes (packaged alias, "
        "folder, merged export, hub id) or an lmembed adapter folder; it embeds with its own "
        "prompts, pooling and length. Its vectors are computed once per text, before step 1, "
        "and cached under $LMEMBED_CACHE/teacher",
    )
    teacher_adapter: str | None = option(
        None, "a trained adapter on --teacher (as `lmembed eval --adapter`)"
    )
    teacher_dtype: DType | None = option(
        None,
        "the teacher's dtype (auto, fp32, bf16, fp16); default: its adapter's saved dtype, "
        "else auto, as `lmembed eval` resolves it",
    )
    distill_loss: DistillKind = option(
        "kl",
        "kl: KL(teacher || student) of each anchor's softmax over the batch's candidates, the "
        "student at --temperature, the teacher at --teacher-temperature; mse: mean squared "
        "difference of the two cosine matrices",
    )
    distill_weight: float = option(
        1.0, "weight of the distillation term added to the contrastive loss (> 0)"
    )
    teacher_temperature: float = option(
        0.05, "temperature of the teacher's softmax for --distill-loss kl"
    )
    teacher_batch_size: int = option(64, "texts per teacher forward pass while filling the cache")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.distill_weight <= 0:
            raise ValueError(f"distill_weight must be positive, got {self.distill_weight}")
        if self.teacher_temperature <= 0:
            raise ValueError(
                f"teacher_temperature must be positive, got {self.teacher_temperature}"
            )
        if self.teacher_batch_size < 1:
            raise ValueError(
                f"teacher_batch_size must be at least 1, got {self.teacher_batch_size}"
            )

    @property
    def enabled(self) -> bool:
        return self.teacher is not None or self.teacher_adapter is not None


def batch_roles(texts: BatchTexts) -> tuple[Role | None, Role | None, Role | None]:
    """The prompt role of each part of a batch, for student and teacher alike: anchors are
    queries, positives and negatives documents; text-only data takes the plain prompt."""
    return (None, None, None) if texts[1] is None else ("query", "document", "document")


def teacher_spec(options: DistillOptions) -> EmbeddingSpec:
    """The teacher's embedding function, resolved as ``lmembed eval`` resolves a model; an
    lmembed adapter folder given as ``--teacher`` is taken as its adapter."""
    model, adapter = options.teacher, options.teacher_adapter
    if adapter is None and model is not None and is_adapter_folder(model):
        model, adapter = None, model
    return resolve_spec(model=model, adapter=adapter, dtype=options.teacher_dtype)


def is_adapter_folder(path: str | Path) -> bool:
    folder = Path(path)
    return (folder / "adapter_config.json").is_file() and (folder / SPEC_FILE).is_file()


def fingerprint(spec: EmbeddingSpec) -> str:
    """The cache key of a teacher: its spec and the sizes and times of its local files."""
    inputs = {
        "spec": spec.to_dict(),
        "model_files": folder_fingerprint(spec.model),
        "adapter_files": folder_fingerprint(spec.adapter),
    }
    return hashlib.blake2b(json.dumps(inputs, sort_keys=True).encode(), digest_size=8).hexdigest()


def text_key(template: str | None, text: str) -> bytes:
    """A text as the teacher embeds it: its prompt template (``None``: none) and the text."""
    payload = f"{template or '{s}'}\x00{text}".encode()
    return hashlib.blake2b(payload, digest_size=KEY_BYTES).digest()


class TeacherCache:
    """One teacher's vectors on disk, as parts of (keys, vectors), read through an index.

    A key present in several parts (two runs filling at once) is read from the part whose
    name sorts first, so every reader sees the same vector.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.index: dict[bytes, tuple[int, int]] = {}
        self.parts: list[np.ndarray] = []
        self.reload()

    def reload(self) -> None:
        """Index every complete part (its keys file written); vectors stay memory-mapped."""
        index: dict[bytes, tuple[int, int]] = {}
        parts: list[np.ndarray] = []
        for keys_file in sorted(self.folder.glob("part-*.keys.npy")):
            vectors_file = keys_file.with_name(keys_file.name.replace(".keys.npy", ".npy"))
            keys = np.load(keys_file)
            vectors = np.load(vectors_file, mmap_mode="r")
            width = parts[0].shape[1] if parts else vectors.shape[1]
            if keys.shape != (len(vectors), KEY_BYTES) or vectors.shape[1] != width:
                raise ValueError(
                    f"{vectors_file}: {vectors.shape} vectors for {keys.shape} keys (width "
                    f"{width} elsewhere); delete this part and its keys file, then rerun"
                )
            for row, key in enumerate(keys):
                index.setdefault(key.tobytes(), (len(parts), row))
            parts.append(vectors)
        self.index, self.parts = index, parts

    def __contains__(self, key: bytes) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def write(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Add one part: the vectors, then the keys that make it count."""
        joined = b"".join(keys)
        name = "part-" + hashlib.blake2b(joined, digest_size=8).hexdigest()
        atomic_write_npy(self.folder / f"{name}.npy", np.asarray(vectors, dtype=np.float32))
        fault_point("teacher_write")
        keys_array = np.frombuffer(joined, dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        atomic_write_npy(self.folder / f"{name}.keys.npy", keys_array)

    def lookup(self, keys: Sequence[bytes]) -> np.ndarray:
        """The vectors of ``keys``, in order (float32 rows)."""
        missing = sum(key not in self.index for key in keys)
        if missing:
            raise RuntimeError(
                f"{self.folder}: {missing} teacher vector(s) missing; a cache part was removed "
                "while training. Rerun (with --resume) to embed them again"
            )
        return np.stack([self.parts[part][row] for part, row in map(self.index.get, keys)])


class Entry(NamedTuple):
    key: bytes
    text: str
    role: Role | None


@dataclass
class Teacher:
    """What the training loop needs of the teacher: its vectors for a batch's texts."""

    spec: EmbeddingSpec
    cache: TeacherCache
    texts: int = 0  # distinct texts the run trains on
    computed: int = 0  # of them embedded by this run (the rest were cached)
    seconds: float = 0.0

    def rows(self, texts: BatchTexts, device: torch.device) -> TeacherRows:
        """The teacher's (anchor, positive, negative) rows of a batch, on ``device``."""
        parts = []
        for part, role in zip(texts, batch_roles(texts), strict=True):
            if not part:
                parts.append(None)
                continue
            keys = [text_key(self.spec.template(role), text) for text in part]
            parts.append(torch.from_numpy(self.cache.lookup(keys)).to(device))
        return TeacherRows(*parts)

    def summary(self) -> dict[str, Any]:
        return {"teacher": self.spec.to_dict(), "cache": str(self.cache.folder),
                "texts": self.texts, "computed": self.computed,
                "seconds": round(self.seconds, 3)}  # fmt: skip


def cache_folder(spec: EmbeddingSpec) -> Path:
    return cache_root() / "teacher" / fingerprint(spec)


def prepare_teacher(
    options: DistillOptions, batches: Iterable[BatchTexts], job: Distributed
) -> Teacher:
    """Resolve the teacher and embed every text of ``batches`` its cache lacks (see the
    module docstring); every rank returns once all are on disk. The random number
    generators are left as they were, so a cache hit and a fill train the same run."""
    began = time.perf_counter()
    spec = teacher_spec(options)
    folder = cache_folder(spec)
    cache = TeacherCache(folder)
    if not (folder / "teacher.json").is_file():
        atomic_write_json(folder / "teacher.json", spec.to_dict())
    with preserved_rng():
        texts, computed = fill(cache, spec, batches, options.teacher_batch_size, job)
    barrier(job)
    cache.reload()
    computed = sum(gather_objects(computed, job))
    teacher = Teacher(spec, cache, texts, computed, time.perf_counter() - began)
    logger.info(
        "teacher %s: %d distinct texts, %d embedded now, %d cached (%s), %.1f s",
        spec.adapter or spec.model, texts, teacher.computed, texts - teacher.computed,
        folder, teacher.seconds,
    )  # fmt: skip
    return teacher


def fill(
    cache: TeacherCache,
    spec: EmbeddingSpec,
    batches: Iterable[BatchTexts],
    batch_size: int,
    job: Distributed,
) -> tuple[int, int]:
    """Embed this rank's fill groups that hold a text the cache lacks; the teacher is loaded
    only if one does. Returns (distinct texts, texts this rank embedded)."""
    embedder: Embedder | None = None
    texts = computed = 0
    for number, group in enumerate(fill_groups(batches, spec, GROUP_PASSES * batch_size)):
        texts += len(group)
        missing = [i for i, entry in enumerate(group) if entry.key not in cache]
        if not missing or number % job.world_size != job.rank:
            continue
        if embedder is None:
            embedder = Embedder.from_spec(spec, device=job.device)
        vectors = embed_group(embedder, group, batch_size)
        cache.write([group[i].key for i in missing], vectors[missing])
        computed += len(missing)
    return texts, computed


def fill_groups(
    batches: Iterable[BatchTexts], spec: EmbeddingSpec, size: int
) -> Iterator[list[Entry]]:
    """The distinct texts of ``batches`` in order of first appearance, ``size`` at a time."""
    seen: set[bytes] = set()
    group: list[Entry] = []
    for texts in batches:
        for part, role in zip(texts, batch_roles(texts), strict=True):
            template = spec.template(role)
            for text in part or ():
                key = text_key(template, text)
                if key in seen:
                    continue
                seen.add(key)
                group.append(Entry(key, text, role))
                if len(group) == size:
                    yield group
                    group = []
    if group:
        yield group


def embed_group(embedder: Embedder, group: list[Entry], batch_size: int) -> np.ndarray:
    """The teacher's vectors of one fill group, each text prompted for its role."""
    ids: list[list[int]] = [[] for _ in group]
    for role in dict.fromkeys(entry.role for entry in group):
        places = [i for i, entry in enumerate(group) if entry.role == role]
        tokens = embedder.tokenize([group[i].text for i in places], role)
        for place, row in zip(places, tokens, strict=True):
            ids[place] = row
    return embedder.encode_ids(ids, batch_size, show_progress=False)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the body without moving any random number generator the run draws from."""
    states = rng_states()
    try:
        yield
    finally:
        set_rng_states(states)
