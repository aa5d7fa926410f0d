"""Quality at equal budget: the trainers of ``systems.py``, 100 steps x 32 each.

Same NLI triplets and batches, lr, schedule, seed and LoRA shape. Each trainer runs once
per seed (~25 minutes of CPU for the three) in its own process and saves its LoRA
weights; all three are then scored through one ``Embedder`` (EOS, last token) with
``lmembed.evaluation.evaluate`` on STSb, BIOSSES and STS17 (Spearman x100), so only the
training differs. ``--seeds 42 7 1234`` repeats it per seed (``--resume`` keeps seeds
already measured with the same recipe), and a gap is called only when it exceeds the seed
spread. ``--systems`` picks the trainers (lmembed always runs); ``--dtype fp32`` trains
every system on fp32 weights, for CPUs that emulate bf16 (the paper's dtype). Checks
recorded with the scores: the reference's cheaper quality-run forward and the ``Embedder``
reproduce the reference's own embeddings, and the ``Embedder`` reproduces
sentence-transformers' own ``encode``.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_quality

writes ``bench/results/quality-<dtype>.json`` and the "Quality at equal budget (<dtype>)"
section of ``docs/benchmarks.md``: one per dtype, so an fp32 comparison and a bf16 one
(the paper's dtype, on a CPU or GPU that computes it natively) stand side by side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    RESULTS,
    data_dir,
    environment,
    environment_block,
    nli_path,
    publish,
    run_worker,
    table,
    worker_main,
)
from bench.systems import (
    TRAINERS,
    Recipe,
    load_lora,
    reference_embed,
    reference_model,
    reference_tokenize,
    st_model,
)
from lmembed.model.embedder import Embedder

SYSTEMS = ("lmembed", "reference", "reference+eos", "sentence-transformers")
TASKS = ("stsb", "biosses", "sts17")
HEADING = "Quality at equal budget"
CHECK_TEXTS = 32


def result_path(dtype: str) -> Path:
    return RESULTS / f"quality-{dtype}.json"


def destination(dtype: str) -> tuple[str, str]:
    """The results name and the docs heading of a run in ``dtype``: one of each per dtype."""
    return result_path(dtype).stem, f"{HEADING} ({dtype})"


def train_worker(system: str, recipe: dict, output: str, workdir: str) -> dict:
    # The reference's quality run pads each role to its longest text and skips the LM
    # head: the same embeddings (checked below), ~10x cheaper.
    extra = {"pad_to_max": False} if system.startswith("reference") else {}
    return TRAINERS[system](recipe, output, **extra)


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean and min cosine between matching rows."""
    cosine = torch.nn.functional.cosine_similarity(a.float(), b.float())
    return {"mean": round(float(cosine.mean()), 5), "min": round(float(cosine.min()), 5)}


@torch.no_grad()
def reference_checks(
    plan: Recipe, folder: Path, embedder, texts: list[str], eos: bool = False
) -> dict:
    """Cosines, on the trained reference model, between its exact embeddings (padded to
    150, all logits) and (a) the quality run's forward (b) ``Embedder`` with its LoRA."""
    model, tokenizer = reference_model(plan)
    load_lora(model, folder).eval()
    length = plan.reference_max_length
    exact = reference_embed(model, reference_tokenize(tokenizer, texts, length, eos=eos))
    cheap = reference_embed(
        model, reference_tokenize(tokenizer, texts, length, False, eos), logits=False
    )
    ours = embedder.embed(texts)
    return {"quality_run_forward": agreement(cheap, exact), "embedder": agreement(ours, exact)}


@torch.no_grad()
def st_check(plan: Recipe, folder: Path, embedder, texts: list[str]) -> dict:
    """Cosines between sentence-transformers' own ``encode`` and ``Embedder``."""
    model = st_model(plan)
    load_lora(model, folder).eval()
    theirs = torch.from_numpy(np.asarray(model.encode(texts, batch_size=len(texts))))
    return {"embedder": agreement(embedder.embed(texts), theirs)}


CHECKS = {
    "reference": reference_checks,
    "reference+eos": partial(reference_checks, eos=True),
    "sentence-transformers": st_check,
}


def as_trained(embedder, system: str):
    """The ``Embedder`` that embeds as ``system`` trained: the paper's code appends no EOS."""
    if system != "reference":
        return embedder
    return Embedder(embedder.model, embedder.tokenizer, replace(embedder.spec, append_eos=False))


def score(embedder, tasks: str, cache: bool) -> dict:
    from lmembed import evaluate

    result = evaluate(embedder, tasks, data_dir(), progress=False, cache=cache)
    return {name: round(score.spearman, 2) for name, score in result.tasks.items()}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[42], help="one training run per system and seed"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep seeds already in quality-<dtype>.json with the same recipe and systems",
    )
    parser.add_argument(
        "--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
        help="the trainers to compare; lmembed is always one of them",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=("bf16", "fp32"), default="bf16",
        help="base weights of every system: bf16 as in the paper; fp32 where the CPU "
        "emulates bf16 (about 3x faster there)",
    )  # fmt: skip
    return parser


def measure(args: argparse.Namespace) -> dict:
    systems = ("lmembed", *[name for name in SYSTEMS[1:] if name in args.systems])
    plan = Recipe(
        data=str(nli_path()), steps=args.steps, batch_size=args.batch_size, dtype=args.dtype
    )
    previous = _previous(plan, args.tasks, systems) if args.resume else {}
    seeds = {}
    for seed in args.seeds:
        if str(seed) in previous:
            print(f"seed {seed}: kept from {result_path(plan.dtype)}", flush=True)
            seeds[str(seed)] = previous[str(seed)]
        else:
            seeds[str(seed)] = train_and_score(replace(plan, seed=seed), args.tasks, systems)
    return {
        "what": f"STS Spearman x100 after {plan.steps} steps x {plan.batch_size}, "
                f"gemma-3-270m, one run per system and seed ({', '.join(seeds)})",
        "environment": environment(),
        "recipe": plan.to_dict(),
        "tasks": args.tasks,
        "systems": systems,
        "seeds": seeds,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    results = measure(parser().parse_args(argv))
    publish(*destination(results["recipe"]["dtype"]), results, render)


def train_and_score(plan: Recipe, tasks: str, systems: tuple[str, ...]) -> dict:
    """Train ``systems`` with one seed, then score and check them."""
    from lmembed.data.triplets import load_triplets
    from lmembed.training.trainer import build_embedder

    runs, scores, checks = {}, {}, {}
    texts = load_triplets(plan.data, limit=CHECK_TEXTS).anchors
    with tempfile.TemporaryDirectory(prefix="lmembed-quality-") as tmp:
        folders = {system: Path(tmp) / system for system in systems}
        for system in systems:
            params = {"system": system, "recipe": plan.to_dict(), "output": str(folders[system])}
            runs[system] = run_worker(__spec__.name, "train", params)
            print(f"seed {plan.seed}, {system}: trained in {sum(runs[system]['step_s']):.0f} s",
                  flush=True)  # fmt: skip
        embedder = build_embedder(plan.train_config()).eval()
        with embedder.model.disable_adapter():
            scores["base (no training)"] = score(embedder, tasks, cache=None)
        for system in systems:
            load_lora(embedder.model, folders[system])
            scored = as_trained(embedder, system)
            scores[system] = score(scored, tasks, cache=False)
            print(f"seed {plan.seed}, {system}: {scores[system]}", flush=True)
            if system in CHECKS:  # while ``embedder`` holds this system's LoRA
                checks[system] = CHECKS[system](plan, folders[system], scored, texts)
    for values in scores.values():
        values["average"] = round(float(np.mean(list(values.values()))), 2)
    training = {system: {"seconds": round(sum(run["step_s"]), 1),
                         "final_loss_mean_last_10": float(np.mean(run["losses"][-10:])),
                         "losses": run["losses"], "peak_rss_mib": run["peak_rss_mib"]}
                for system, run in runs.items()}  # fmt: skip
    return {"scores": scores, "training": training, "checks_cosine": checks,
            "date": environment()["date"]}  # fmt: skip


def _previous(plan: Recipe, tasks: str, systems: tuple[str, ...]) -> dict:
    """Per-seed results of an earlier run with the same recipe (seed aside), tasks and
    systems."""
    path = result_path(plan.dtype)
    if not path.is_file():
        return {}
    old = json.loads(path.read_text(encoding="utf-8"))
    same = {**old["recipe"], "seed": plan.seed} == plan.to_dict()
    same = same and old["tasks"] == tasks and tuple(old["systems"]) == systems
    return old.get("seeds", {}) if same else {}


def render(results: dict) -> str:
    plan, seeds = Recipe(**results["recipe"]), results["seeds"]
    systems = tuple(results["systems"])
    runs = list(seeds.values())
    names = [name for name in runs[0]["scores"]["lmembed"] if name != "average"]
    columns = [*names, "average"]

    def mean(system: str, key: str) -> float:
        return float(np.mean([run["scores"][system][key] for run in runs]))

    rows = []
    for system in runs[0]["scores"]:
        trained = system in systems
        per_seed = " / ".join(f"{run['scores'][system]['average']:.2f}" for run in runs)
        loss = np.mean([run["training"][system]["final_loss_mean_last_10"] for run in runs]
                       ) if trained else None  # fmt: skip
        seconds = np.mean([run["training"][system]["seconds"] for run in runs]) if trained else 0
        rows.append([system, *[f"{mean(system, c):.2f}" for c in columns],
                     per_seed if trained and len(runs) > 1 else "–",
                     f"{loss:.3f}" if trained else "–",
                     f"{seconds:.0f}" if trained else "–"])  # fmt: skip
    verdicts = [verdict(runs, other) for other in systems[1:]]
    checks = [run["checks_cosine"] for run in runs]
    minutes = sum(sum(r["training"][s]["seconds"] for s in systems) for r in runs) / 60
    how = (
        "Each trainer ran once"
        if len(runs) == 1
        else f"Each trainer ran once per seed ({', '.join(seeds)}), table: means over seeds"
    )
    noise = (
        "One seed per system, so differences of a point or so may be seed noise."
        if len(runs) == 1
        else "The *per seed* column shows how far one system moves with the seed alone."
    )
    return "\n\n".join([
        environment_block(results["environment"]),
        f"{how}; training alone took {minutes:.0f} minutes in all. {plan.steps} steps x "
        f"{plan.batch_size} on the shared NLI triplets (the same batches for all systems "
        f"at a given seed), lr {plan.lr} with {plan.warmup} warm-up steps and "
        f"cosine decay, AdamW (weight decay {plan.weight_decay}), gradient clipping 1.0, "
        f"LoRA 8/32/0.1 on q_proj/v_proj over {plan.dtype} weights. Every trained LoRA "
        "is scored through the same `Embedder` (last token) with "
        "`lmembed.evaluation.evaluate`: Spearman x100, with EOS appended"
        + (" except for `reference`, the paper's code as written, which neither trains nor "
           "embeds with it (`reference+eos` is that code with EOS and an fp32 loss)"
           if "reference" in systems else "")
        + f". The loss column is the mean of the last 10 steps. {noise}",
        table(["system", *columns, "average per seed", "final loss", "train s"], rows),
        "\n".join(verdicts),
        checks_paragraph(plan, checks, systems),
    ])  # fmt: skip


def verdict(runs: list[dict], other: str) -> str:
    """lmembed against ``other`` on the mean average, called only when the gap is larger
    than either system's spread over seeds (max - min of its per-seed averages)."""
    ours, theirs = ([run["scores"][name]["average"] for run in runs] for name in ("lmembed", other))
    gap = float(np.mean(ours) - np.mean(theirs))
    spread = max(max(ours) - min(ours), max(theirs) - min(theirs))
    wins = sum(a >= b for a, b in zip(ours, theirs, strict=True))
    if len(runs) < 2:
        call = " (not resolved: one seed gives no spread to compare with)"
    elif abs(gap) > spread:
        side = "ahead" if gap > 0 else "behind"
        call = f", seed spread {spread:.2f} (**{side}**: the gap exceeds the seed spread)"
    else:
        call = f", seed spread {spread:.2f} (**not resolved**: the gap is within the seed spread)"
    return (
        f"- vs {other}: mean average {gap:+.2f}{call}; "
        f"lmembed ahead with {wins} of {len(runs)} seeds."
    )


def checks_paragraph(plan: Recipe, checks: list[dict], systems: tuple[str, ...]) -> str:
    """What the agreement checks of the systems that ran found."""
    found = []
    ran = [name for name in systems if name.startswith("reference")]
    if ran:
        found.append(
            "the reference's quality run pads each role to its longest text and skips the LM "
            f"head, instead of padding to {plan.reference_max_length} and computing all "
            "logits (left padding and position -1 either way; the full recipe would take "
            "over an hour for 100 steps here). Its embeddings match the full recipe's at "
            + ", ".join(f"{_worst(checks, name, 'quality_run_forward')} ({name})" for name in ran)
            + "; `Embedder` with the reference's LoRA matches the full recipe at "
            + ", ".join(f"{_worst(checks, name, 'embedder')} ({name})" for name in ran)
        )  # fmt: skip
    if "sentence-transformers" in systems:
        found.append(
            "`Embedder` with sentence-transformers' LoRA matches `SentenceTransformer.encode` "
            f"at {_worst(checks, 'sentence-transformers', 'embedder')}"
        )
    notes = []
    if plan.dtype == "bf16":
        notes.append(
            "Cosines below 1 come from bf16 rounding, which depends on the padding (in fp32, "
            "padding moves an embedding by under 1e-6 in cosine)."
        )
    if ran:
        notes.append(
            "The reference keeps the paper's gaussian LoRA init and one forward pass per role."
        )
    return " ".join([
        "Checks (cosine over 32 NLI sentences with the trained weights, mean / min, the "
        f"worst over seeds): {'; '.join(found) or 'none (lmembed ran alone)'}.",
        *notes,
    ])  # fmt: skip


def _worst(checks: list[dict], system: str, check: str) -> str:
    values = [c[system][check] for c in checks]
    return f"{min(v['mean'] for v in values):.4f} / {min(v['min'] for v in values):.4f}"


if __name__ == "__main__" and not worker_main({"train": train_worker}):
    main()
