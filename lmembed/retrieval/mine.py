"""Hard-negative mining: for each anchor, similar documents that are not its positives.

For every anchor of a pairs file, the corpus (default: every positive in the file) is
searched exactly by cosine; then, in this order:

1. the anchor's own positives are dropped, by identity and by identical text
   (``positive``), as are near-copies of a positive or of the anchor itself: equal after
   case folding and whitespace collapsing (``duplicate``);
2. of the remaining candidates, ranks ``start:end`` of ``--rank-range`` are considered
   (0-based, end exclusive: ``10:100`` skips the 10 most similar, which are the likeliest
   unlabelled positives);
3. candidates scoring above ``max_score_ratio x`` the anchor's lowest positive score are
   dropped (positive-aware filtering against false negatives, NV-Retriever's TopK-PercPos);
4. ``negatives`` are kept per anchor, the most similar first (or sampled at random).

The output is FlagEmbedding jsonl, ``{"query", "pos": [...], "neg": [...]}``, one line per
anchor with at least one negative, which ``lmembed train`` reads. Work happens in blocks
of anchors under ``<output>.work/`` (encoded corpus chunks, finished blocks), so memory is
bounded by a block and a chunk, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from lmembed.io import atomic_write_json, atomic_write_text
from lmembed.options import option
from lmembed.retrieval.inputs import read_corpus, read_pairs
from lmembed.retrieval.search import TopK, normalize
from lmembed.retrieval.store import RoleEncoder, corpus_key, encoded_chunks

logger = logging.getLogger(__name__)
STATE_VERSION = 1


@dataclass
class MineOptions:
    """Options of ``lmembed mine`` (the embedding options come from ``EmbeddingSpec``)."""

    data: str | None = option(
        None,
        "pairs file (.jsonl/.csv/.tsv[.gz]): anchor|query|sent0 and positive|pos|sent1",
        required=True,
    )
    output: str | None = option(
        None, "mined FlagEmbedding jsonl ({query, pos, neg})", required=True
    )
    corpus: str | None = option(
        None, "texts to mine from (.txt, .jsonl text/title, .csv/.tsv text); default: the positives"
    )
    negatives: int = option(5, "hard negatives kept per anchor")
    rank_range: str = option(
        "10:100", "START:END ranks (0-based, end exclusive) of non-positive candidates to consider"
    )
    max_score_ratio: float | None = option(
        0.95, "drop candidates scoring above this x score(anchor, positive); 0: no filter"
    )
    sampling: Literal["top", "random"] = option(
        "top", "keep the most similar surviving candidates, or a random sample of them"
    )
    seed: int = option(0, "seed for --sampling random")
    batch_size: int = option(32, "texts per forward pass")
    anchor_block: int = option(4096, "anchors searched (and saved for resuming) at a time")
    chunk_size: int = option(16384, "corpus texts encoded and searched at a time")
    resume: bool = option(True, "continue an interrupted run from <output>.work/")

    def __post_init__(self) -> None:
        self.range()  # validates
        if self.negatives < 1:
            raise ValueError(f"negatives must be at least 1, got {self.negatives}")
        if self.max_score_ratio is not None and self.max_score_ratio < 0:
            raise ValueError(f"max_score_ratio must be >= 0 (0: off), got {self.max_score_ratio}")

    def range(self) -> tuple[int, int]:
        """``rank_range`` as (start, end)."""
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", self.rank_range)
        if not match or int(match[1]) >= int(match[2]):
            raise ValueError(
                f"rank_range must be START:END with START < END, got {self.rank_range!r}"
            )
        return int(match[1]), int(match[2])


@dataclass
class MineSummary:
    """What mining did: sizes, what each rule removed, what was written."""

    anchors: int = 0
    pairs: int = 0
    documents: int = 0
    removed_positive: int = 0
    removed_duplicate: int = 0
    skipped_rank: int = 0
    removed_ratio: int = 0
    negatives: int = 0
    anchors_short: int = 0
    anchors_dropped: int = 0
    output: str = ""
    elapsed_s: float = 0.0

    def add(self, other: dict[str, int]) -> None:
        for key, value in other.items():
            setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict:
        return asdict(self)


RULE_COUNTS = (
    "removed_positive",
    "removed_duplicate",
    "skipped_rank",
    "removed_ratio",
    "negatives",
    "anchors_short",
    "anchors_dropped",
)


def mine(encoder: RoleEncoder, options: MineOptions, progress: bool = True) -> MineSummary:
    """Mine hard negatives for every anchor of ``options.data``; write ``options.output``."""
    started = time.perf_counter()
    if not options.data or not options.output:
        raise ValueError("mining needs data (a pairs file) and output (a .jsonl path)")
    pairs = read_pairs(options.data)
    anchors = list(pairs)
    corpus = read_corpus(options.corpus) if options.corpus else _unique(pairs.values())
    output = Path(options.output)
    work = _work_dir(output, encoder, options, corpus)
    state = json.loads((work / "state.json").read_text(encoding="utf-8"))
    plan = _Plan(encoder, options, corpus, work / "corpus", progress)
    blocks = range(0, len(anchors), options.anchor_block)
    bar = tqdm(blocks, desc="mine", unit="block", disable=not progress or len(blocks) < 2)
    for number, start in enumerate(bar):
        if str(number) in state["blocks"]:
            continue
        block = anchors[start : start + options.anchor_block]
        lines, counts = plan.mine_block(block, [pairs[a] for a in block], start)
        atomic_write_text(work / f"part-{number:06d}.jsonl", "".join(lines))
        state["blocks"][str(number)] = counts
        atomic_write_json(work / "state.json", state)
    summary = MineSummary(
        anchors=len(anchors),
        pairs=sum(len(p) for p in pairs.values()),
        documents=len(corpus),
        output=str(output),
    )
    for counts in state["blocks"].values():
        summary.add({k: counts[k] for k in RULE_COUNTS})
    _concatenate(sorted(work.glob("part-*.jsonl")), output)
    shutil.rmtree(work)
    summary.elapsed_s = round(time.perf_counter() - started, 3)
    logger.info("mined %s: %s", output, summary.to_dict())
    return summary


class _Plan:
    """Everything one anchor block needs: the encoded corpus and its text index."""

    def __init__(
        self,
        encoder: RoleEncoder,
        options: MineOptions,
        corpus: list[str],
        folder: Path,
        progress: bool,
    ) -> None:
        self.encoder = encoder
        self.options = options
        self.corpus = corpus
        self.folder = folder
        self.start, self.end = options.range()
        self.by_text: dict[str, list[int]] = {}
        self.by_key: dict[str, list[int]] = {}
        for i, text in enumerate(corpus):
            self.by_text.setdefault(text, []).append(i)
            self.by_key.setdefault(_key(text), []).append(i)
        # Encode (or find) every chunk once before the first block.
        for _ in self._chunks(progress):
            pass

    def _chunks(self, progress: bool = False):
        return encoded_chunks(
            self.encoder,
            self.corpus,
            self.folder,
            self.options.chunk_size,
            self.options.batch_size,
            progress,
        )

    def mine_block(
        self, anchors: list[str], positives: list[list[str]], offset: int
    ) -> tuple[list[str], dict[str, int]]:
        counts = dict.fromkeys(RULE_COUNTS, 0)
        excluded = [self._excluded(a, p) for a, p in zip(anchors, positives, strict=True)]
        k = self.end + max(len(e[0]) + len(e[1]) for e in excluded)
        queries = self.encoder.encode(
            anchors, batch_size=self.options.batch_size, show_progress=False, role="query"
        )
        floors = self._positive_floor(np.asarray(queries), positives)
        top = TopK(np.asarray(queries, dtype=np.float32), min(k, len(self.corpus)))
        for chunk in self._chunks():
            top.add(chunk)
        lines = []
        for row, anchor in enumerate(anchors):
            negatives = self._select(
                top.indices[row], top.scores[row], excluded[row], floors[row], counts, offset + row
            )
            if negatives:
                record = {"query": anchor, "pos": positives[row], "neg": negatives}
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        return lines, counts

    def _excluded(self, anchor: str, positives: list[str]) -> tuple[set[int], set[int]]:
        """Corpus rows that are a positive (same text), and near-copies of one or the anchor."""
        exact = {i for p in positives for i in self.by_text.get(p, [])}
        near = {i for t in [anchor, *positives] for i in self.by_key.get(_key(t), [])}
        return exact, near - exact

    def _positive_floor(self, queries: np.ndarray, positives: list[list[str]]) -> np.ndarray:
        """Each anchor's lowest cosine to its positives (the ratio filter's reference)."""
        texts = _unique(positives)
        vectors = normalize(self._document_vectors(texts))
        row = {t: i for i, t in enumerate(texts)}
        unit = normalize(queries)
        return np.array(
            [min(float(unit[a] @ vectors[row[p]]) for p in pos) for a, pos in enumerate(positives)]
        )

    def _document_vectors(self, texts: list[str]) -> np.ndarray:
        """Document embeddings: read from the corpus store when there, encoded otherwise."""
        found: dict[str, np.ndarray] = {}
        missing = [t for t in texts if t not in self.by_text]
        if missing:
            encoded = self.encoder.encode(
                missing, batch_size=self.options.batch_size, show_progress=False, role="document"
            )
            found.update(zip(missing, np.asarray(encoded, dtype=np.float32), strict=True))
        wanted: dict[int, list[tuple[str, int]]] = {}
        for text in texts:
            if text in self.by_text:
                index = self.by_text[text][0]
                wanted.setdefault(index // self.options.chunk_size, []).append((text, index))
        for number, chunk in enumerate(self._chunks()):
            for text, index in wanted.get(number, []):
                found[text] = np.asarray(chunk[index - number * self.options.chunk_size])
        return np.stack([found[t] for t in texts]).astype(np.float32)

    def _select(self, indices, scores, excluded, floor, counts, anchor_index) -> list[str]:
        exact, near = excluded
        candidates: list[tuple[int, float]] = []
        for index, score in zip(indices.tolist(), scores.tolist(), strict=True):
            if index in exact:
                counts["removed_positive"] += 1
            elif index in near:
                counts["removed_duplicate"] += 1
            else:
                candidates.append((index, score))
        counts["skipped_rank"] += min(self.start, len(candidates))
        window = candidates[self.start : self.end]
        ratio = self.options.max_score_ratio
        if ratio:  # None or 0: no filter
            kept = [(i, s) for i, s in window if s <= ratio * floor]
            counts["removed_ratio"] += len(window) - len(kept)
            window = kept
        chosen = self._pick(window, anchor_index)
        counts["negatives"] += len(chosen)
        counts["anchors_short"] += len(chosen) < self.options.negatives
        counts["anchors_dropped"] += not chosen
        return chosen

    def _pick(self, window: list[tuple[int, float]], anchor_index: int) -> list[str]:
        """``negatives`` texts from the window, no two equal after normalisation."""
        if self.options.sampling == "random":
            window = random.Random(self.options.seed * 1_000_003 + anchor_index).sample(
                window, len(window)
            )
        chosen, seen = [], set()
        for index, _ in window:
            key = _key(self.corpus[index])
            if key not in seen:
                seen.add(key)
                chosen.append(self.corpus[index])
            if len(chosen) == self.options.negatives:
                break
        return chosen


def _key(text: str) -> str:
    """Text identity for duplicates: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def _unique(groups) -> list[str]:
    return list(dict.fromkeys(t for group in groups for t in group))


def _work_dir(output: Path, encoder: RoleEncoder, options: MineOptions, corpus: list[str]) -> Path:
    """``<output>.work``, reused when it belongs to the same job and ``resume`` is on."""
    work = output.with_name(output.name + ".work")
    settings = {k: v for k, v in asdict(options).items() if k not in ("output", "resume")}
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "version": STATE_VERSION,
                "options": settings,
                "data": hashlib.sha256(Path(str(options.data)).read_bytes()).hexdigest(),
                "corpus": corpus_key(encoder, corpus, options.chunk_size),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    state_path = work / "state.json"
    if options.resume and state_path.is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("fingerprint") == fingerprint:
            logger.info("resuming %s: %d block(s) done", work, len(state["blocks"]))
            return work
        logger.warning("%s belongs to another mining job; starting over", work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    atomic_write_json(state_path, {"fingerprint": fingerprint, "blocks": {}})
    return work


def _concatenate(parts: list[Path], output: Path) -> None:
    """Join the block files into ``output`` through a temp file and a rename."""
    tmp = output.with_name(f".{output.name}.tmp")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("wb") as handle:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, output)
