"""Hard-negative mining at corpus scale: wall time (encoding vs search) and peak memory.

Builds a corpus of ``--documents`` texts from the shared data (every distinct STS and SNLI
sentence, then pairs of them joined as two-sentence passages until the size is reached),
mines negatives for SNLI's entailment pairs over it, and writes bench/results/mine.json.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_mine --documents 100000

``--search-only`` times the exact chunked search alone on random vectors (``--queries``
anchors x ``--documents`` x 384 dims, top 110), the part of mining that grows with the
corpus beyond encoding it; results go to bench/results/mine-search.json.

It has no section of docs/benchmarks.md (so no ``render``): docs/retrieval.md quotes its
figures by hand.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import data_dir, environment, save_result
from lmembed import Embedder
from lmembed.retrieval.mine import MineOptions, mine
from lmembed.retrieval.search import TopK


def sentences(root: Path) -> list[str]:
    found: dict[str, None] = {}
    for path in sorted((root / "sts").glob("*.tsv")):
        for line in path.read_text(encoding="utf-8").split("\n")[1:]:
            cells = line.split("\t")
            if len(cells) >= 2:
                found.update(dict.fromkeys(c.strip() for c in cells[:2] if c.strip()))
    for path in sorted((root / "nli/raw/snli_senteval_tok").glob("s[12].*")):
        found.update(
            dict.fromkeys(t.strip() for t in path.read_text("utf-8").split("\n") if t.strip())
        )
    return list(found)


def snli_pairs(root: Path) -> list[dict]:
    folder = root / "nli/raw/snli_senteval_tok"
    rows = []
    for split in ("dev", "test"):
        s1, s2, labels = (
            (folder / f"{n}.{split}").read_text("utf-8").split("\n") for n in ("s1", "s2", "labels")
        )
        rows += [
            {"anchor": a.strip(), "positive": p.strip()}
            for a, p, y in zip(s1, s2, labels, strict=False)
            if y == "entailment"
        ]
    return rows


class Timed:
    """Wraps an encoder to add up the time spent encoding."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.spec, self.seconds, self.texts = inner, inner.spec, 0.0, 0

    def encode(self, texts, batch_size=32, show_progress=None, role=None):
        started = time.perf_counter()
        try:
            return self.inner.encode(
                texts, batch_size=batch_size, show_progress=show_progress, role=role
            )
        finally:
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)


def search_only(queries: int, documents: int, chunk: int = 16384, dim: int = 384) -> dict:
    rng = np.random.default_rng(0)
    top = TopK(rng.standard_normal((queries, dim), dtype=np.float32), 110)
    chunks = [
        rng.standard_normal((min(chunk, documents - s), dim), dtype=np.float32)
        for s in range(0, documents, chunk)
    ]
    started = time.perf_counter()
    for block in chunks:
        top.add(block)
    return {
        "queries": queries,
        "documents": documents,
        "dim": dim,
        "k": 110,
        "search_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
        "environment": environment(),
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--search-only", action="store_true")
    parser.add_argument("--queries", type=int, default=6162)
    return parser


def measure(args: argparse.Namespace) -> dict:
    """Mining over the corpus, or with ``--search-only`` the search alone."""
    torch.set_num_threads(args.threads)
    if args.search_only:
        return search_only(args.queries, args.documents)
    root = data_dir()
    texts = sentences(root)
    rng = random.Random(0)
    seen = set(texts)
    while len(texts) < args.documents:
        joined = f"{rng.choice(texts)} {rng.choice(texts)}"
        if joined not in seen:
            seen.add(joined)
            texts.append(joined)
    texts = texts[: args.documents]
    pairs = snli_pairs(root)
    embedder = Embedder.from_pretrained(args.model, dtype="fp32")
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp, "corpus.txt")
        corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
        data = Path(tmp, "pairs.jsonl")
        data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        options = MineOptions(
            data=str(data),
            corpus=str(corpus),
            output=str(Path(tmp, "mined.jsonl")),
            negatives=7,
            rank_range="10:100",
            max_score_ratio=0.95,
            batch_size=args.batch_size,
        )
        timed = Timed(embedder)
        started = time.perf_counter()
        summary = mine(timed, options, progress=True)
        wall = time.perf_counter() - started
    return {
        "documents": len(texts),
        "pairs": len(pairs),
        "model": args.model,
        "threads": args.threads,
        "wall_s": round(wall, 1),
        "encode_s": round(timed.seconds, 1),
        "encoded_texts": timed.texts,
        "search_and_filter_s": round(wall - timed.seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_model_load_mib": round(rss_model),
        "summary": summary.to_dict(),
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = measure(args)
    save_result("mine-search" if args.search_only else "mine", result)
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
