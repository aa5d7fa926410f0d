"""Rebuild the model the H200 sweep ran on: gemma-3-270m with unused embedding rows zeroed.

The GPU scored lower than the CPU (docs/quality.md, "Learning rate and LoRA rank at the
30-minute recipe"), and the model that ran there was not the packaged one: the embedding
rows of tokens "that no data text uses" were set to zero to fit the transfer, and no
script for it was kept. Which texts counted is ambiguous, so both readings are built
from the packaged model's fp32 cache, tokenized as lmembed tokenizes (``Embedder.tokenize``:
BOS, truncation, EOS appended), every special token kept:

* ``train``: the training triplets only (the sweep's ``data``);
* ``data``: the training triplets and every built-in STS task (``lmembed.data.sts.TASKS``).

For each it counts, per scored task (STSb dev and the nine), the texts and pairs that hold
a zeroed token, and writes the folder to lmembed's cache (never the repo; a later run
reuses it) for ``lmembed eval --model FOLDER``:

    python -m bench.diagnostics.zeroed_rows

Counts go to ``docs/results/gpu-carry/zeroed-rows.json``; ``table()`` renders them with the
``lmembed eval`` scores saved beside them (docs/quality.md shows it; tests check it).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoModel, PreTrainedModel

from bench.common import ROOT, data_dir, environment, nli_path
from lmembed.data.sts import TASKS, load_sts, resolve_tasks
from lmembed.data.triplets import load_triplets
from lmembed.evaluation import STSResult
from lmembed.io import atomic_directory, atomic_write_json, cache_root
from lmembed.model.embedder import Embedder
from lmembed.model.gguf_cache import SOURCE_FILE, copy_all_but_weights
from lmembed.model.loading import resolve

MODEL = "gemma-3-270m"
SCORED = ("stsb-dev", *resolve_tasks("all"))
RESULTS = ROOT / "docs" / "results" / "gpu-carry"
RESULT = RESULTS / "zeroed-rows.json"
# lmembed eval outputs beside RESULT: row label -> file stems (STSb dev, then the nine)
SCORES = {
    "packaged": ("packaged-fp32-stsb-dev", "packaged-fp32-nine"),
    'rows zeroed, reading "train"': ("zeroed-train-fp32-stsb-dev", "zeroed-train-fp32-nine"),
}
SHOWN = 20  # most frequent zeroed tokens listed per task


def zeroed_rows(model: PreTrainedModel) -> set[int]:
    """Token ids whose input-embedding row is all zero (none in a trained model)."""
    weight = model.get_input_embeddings().weight
    return set(torch.nonzero(~weight.detach().any(dim=1)).flatten().tolist())


def zeroed_tokens(ids: list[list[int]], zeroed: set[int]) -> list[list[int]]:
    """Per text, the ids it holds whose embedding row is zero (empty: the text is clean)."""
    return [[i for i in row if i in zeroed] for row in ids]


def used_ids(embedder: Embedder, texts: Iterable[str]) -> set[int]:
    """Every id the texts tokenize to, as lmembed tokenizes them, plus the special tokens."""
    used = set(embedder.tokenizer.all_special_ids)
    for row in embedder.tokenize(list(texts)):
        used.update(row)
    return used


def variant_texts() -> dict[str, list[str]]:
    """The texts whose tokens keep their rows, under each reading of "data text"."""
    triplets = load_triplets(nli_path())
    train = [*triplets.anchors, *triplets.positives, *triplets.negatives]
    sts = [t for name in TASKS for task in [load_sts(name, data_dir())]
           for t in (*task.sentences1, *task.sentences2)]  # fmt: skip
    return {"train": train, "data": train + sts}


def write_zeroed(embedder: Embedder, source: Path, target: Path, keep: set[int]) -> None:
    """Copy ``source`` (``embedder``'s folder) to ``target``, rows of ids outside ``keep`` zero."""
    weight = embedder.model.get_input_embeddings().weight
    drop = torch.ones(weight.shape[0], dtype=torch.bool)
    drop[sorted(keep)] = False
    original = weight.detach().clone()
    with torch.no_grad(), atomic_directory(target) as tmp:
        weight[drop] = 0
        copy_all_but_weights(source, tmp, skip=(SOURCE_FILE,))  # not the GGUF cache marker
        save_model(embedder.model, str(tmp / "model.safetensors"))
        weight.copy_(original)


def built_rows(folder: Path) -> set[int] | None:
    """The zero rows of a folder this script wrote earlier (``None``: there is none)."""
    if not (folder / "model.safetensors").is_file():
        return None
    return zeroed_rows(AutoModel.from_pretrained(folder, dtype=torch.float32))


def task_ids(embedder: Embedder) -> dict[str, list[list[int]]]:
    """Per scored task, the token ids of its first sentences, then its second ones."""
    tasks = {name: load_sts(name, data_dir()) for name in SCORED}
    return {name: embedder.tokenize([*t.sentences1, *t.sentences2]) for name, t in tasks.items()}


def task_counts(
    embedder: Embedder, ids_by_task: dict[str, list[list[int]]], zeroed: set[int]
) -> dict[str, dict]:
    """Per scored task: texts and pairs holding a zeroed token, and the commonest of them."""
    counts = {}
    for name, ids in ids_by_task.items():
        half = len(ids) // 2  # pairs
        hits = zeroed_tokens(ids, zeroed)
        hit = [bool(h) for h in hits]
        tokens, dropped = sum(map(len, ids)), sum(map(len, hits))
        pairs = sum(a or b for a, b in zip(hit[:half], hit[half:], strict=True))
        common = Counter(i for row in hits for i in row).most_common(SHOWN)
        counts[name] = {
            "texts": len(hit),
            "texts_with_zeroed": sum(hit),
            "text_share": round(sum(hit) / len(hit), 4),
            "pairs": half,
            "pairs_with_zeroed": pairs,
            "pair_share": round(pairs / half, 4),
            "tokens": tokens,  # BOS and EOS included
            "tokens_zeroed": dropped,
            "token_share": round(dropped / tokens, 4),
            "commonest_zeroed": [
                {"token": embedder.tokenizer.convert_ids_to_tokens(i), "id": i, "texts": n}
                for i, n in common
            ],
        }
    return counts


def summary(row: dict) -> str:
    """One task's counts on one line."""
    texts = f"{row['texts_with_zeroed']}/{row['texts']} texts ({row['text_share']:.1%})"
    pairs = f"{row['pairs_with_zeroed']}/{row['pairs']} pairs ({row['pair_share']:.1%})"
    return f"{texts}, {pairs}, {row['token_share']:.1%} of tokens"


def table(results: Path = RESULTS) -> str:
    """Markdown: per task, the share of texts holding a zeroed token under each reading,
    then the base model's Spearman x100 (fp32, CPU), packaged and zeroed."""
    variants = json.loads((results / RESULT.name).read_text())["variants"]
    lines = [f"| | {' | '.join(SCORED)} |", "|---|" + "---:|" * len(SCORED)]
    for name, variant in variants.items():
        shares = (f"{variant['tasks'][task]['text_share']:.1%}" for task in SCORED)
        lines.append(f'| texts holding a zeroed token, reading "{name}" | {" | ".join(shares)} |')
    for label, stems in SCORES.items():
        scores = {}
        for stem in stems:
            result = STSResult.load(results / f"{stem}.json")
            scores.update({task: result.score(task) for task in result.tasks})
        cells = (f"{scores[task]:.2f}" for task in SCORED)
        lines.append(f"| base model, {label} (fp32, CPU) | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULT, help="counts JSON")
    args = parser.parse_args()
    source = resolve(MODEL)
    embedder = Embedder.from_pretrained(MODEL, dtype="fp32")
    vocab = embedder.model.get_input_embeddings().weight.shape[0]
    original = zeroed_rows(embedder.model)  # rows the packaged model has at zero already
    ids_by_task = task_ids(embedder)
    variants = {}
    for name, texts in variant_texts().items():
        keep = used_ids(embedder, texts)
        folder = cache_root() / "diagnostics" / f"{source.name}-zeroed-{name}"
        zeroed = built_rows(folder)
        if zeroed != original | (set(range(vocab)) - keep):  # not built yet, or from other texts
            write_zeroed(embedder, source, folder, keep)
            zeroed = built_rows(folder)
        print(f"{name}: {len(keep)} ids used, {len(zeroed)} rows zero -> {folder}", flush=True)
        variants[name] = {
            "folder": str(folder),
            "texts": len(texts),
            "ids_used": len(keep),
            "rows_zero": len(zeroed),
            "tasks": task_counts(embedder, ids_by_task, zeroed),
        }
        for task, row in variants[name]["tasks"].items():
            print(f"  {task:9s} {summary(row)}")
    result = {"model": MODEL, "source": str(source), "variants": variants}
    atomic_write_json(args.output, {**result, "environment": environment()})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
