"""Roofline: how close training and encoding come to this machine's matmul peak, and where
a training step's time goes.

In one process, back to back: (1) training steps of the demo recipe (gemma-3-270m,
``--dtype auto``: bf16 where the CPU computes it natively, else fp32; 32 NLI triplets per
step; LoRA 8/32 on every linear layer); (2) the bf16 and fp32 ``torch.matmul`` peak (the best
of a large square product and the model's MLP shape); (3) encoding the STSb test
sentences in batches of 32; (4) ``torch.profiler`` over training steps: operator self
time grouped into matmuls (base and LoRA), attention, casts and copies, other kernels,
plus the optimizer, tokenization and the Python around them; (5) the training steps again
with the options (``--fast-options``) and the ``bench/lora_candidates.py`` candidates
(``--fast-changes``) that won in ``bench/bench_step_options.py``: the fraction of peak
after those optimisations.

Model FLOPs per token (stated, not measured): with ``N`` the base's linear-layer weights
(embeddings excluded; the tied output head is not used for embeddings), ``L`` layers,
``H x d`` attention width and ``S`` the padded sequence length of the token's pass,

    forward  = 2 N + 4 L H d S          (matmuls; QK^T and AV over S keys)
    training = 2 x (2 N) + 3 x (4 L H d S)   (frozen base: backward to activations only,
                                         one matmul per weight; attention both inputs)

LoRA's own FLOPs (r = 8: r (in + out) against in x out per layer, 1.9% of the base's)
are not counted. Achieved FLOP/s use real
(unpadded) tokens; padded tokens are reported beside them.

    flock /tmp/lmembed-cpu.lock .venv/bin/python -m bench.bench_roofline

writes ``bench/results/roofline.json`` and the "Roofline" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence

import torch

from bench.common import (
    data_dir,
    demo_config,
    environment,
    environment_block,
    publish,
    table,
)
from bench.lora_candidates import compute_in_base_dtype, use_fast_dropout

NAME, HEADING = "roofline", "Roofline"
# Changes to the built embedder that the second training row may apply, by name.
CHANGES = {"compute_in_base_dtype": compute_in_base_dtype, "use_fast_dropout": use_fast_dropout}
# The second training row: the options and candidates that keep the recipe and won in
# bench/bench_step_options.py on a native-bf16 CPU (docs/benchmarks.md).
FAST_OPTIONS = ["compile"]
FAST_CHANGES = ["compute_in_base_dtype", "use_fast_dropout"]


def matmul_gflops(shape: tuple[int, int, int], dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best GFLOP/s of ``(m, k) @ (k, n)`` over repeated timed runs of about ``seconds``."""
    m, k, n = shape
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    best, began = 0.0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        tick = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * m * k * n / (time.perf_counter() - tick) / 1e9)
    return best


def peaks(mlp_shape: tuple[int, int, int]) -> dict:
    shapes = {"square 2048": (2048, 2048, 2048), "MLP": mlp_shape}
    return {
        name: {label: round(matmul_gflops(shape, dtype), 1) for label, shape in shapes.items()}
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))
    }


def model_shape(embedder) -> dict:
    """``N`` (linear weights of the decoder layers), layers, attention width."""
    config = embedder.model.config
    config = getattr(config, "text_config", config)
    base = embedder.model.get_base_model() if hasattr(embedder.model, "get_base_model") else None
    model = base or embedder.model
    linear = sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and "lm_head" not in name
    )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = config.num_attention_heads * head_dim
    return {"linear_params": linear, "layers": config.num_hidden_layers, "attention_width": width,
            "hidden": config.hidden_size, "intermediate": config.intermediate_size}  # fmt: skip


def pass_tokens(embedder, ids: list[list[int]], chunk: int) -> tuple[int, int, int]:
    """(real tokens, padded tokens, sum over tokens of the padded length) of one
    ``embed_ids`` call: the same length-sorted chunks it pads."""
    real = padded = attended = 0
    for part in embedder.chunks(ids, chunk):
        longest = max(len(ids[i]) for i in part)
        real += sum(len(ids[i]) for i in part)
        padded += longest * len(part)
        attended += longest * longest * len(part)
    return real, padded, attended


def flops(shape: dict, real: int, attended: int, training: bool) -> float:
    matmul = 2 * shape["linear_params"] * real
    attention = 4 * shape["layers"] * shape["attention_width"] * attended
    return 2 * matmul + 3 * attention if training else matmul + attention


def training_run(
    steps: int, options: Sequence[str], changes: Sequence[str] = ()
) -> tuple[dict, object, object, dict]:
    """Time ``steps`` demo-recipe steps with the boolean training ``options`` on and the
    ``changes`` (names in ``CHANGES``) applied to the built embedder (after warm-up steps:
    one, or three when compiling); returns the figures and what the rest of the run needs:
    the embedder, a step function and the model's shape."""
    from lmembed.data.training import load_training_data
    from lmembed.losses import build_loss
    from lmembed.training.distributed import Distributed
    from lmembed.training.trainer import batch_texts, build_embedder, forward_backward

    config = demo_config().replace(**dict.fromkeys(options, True))
    data = load_training_data(config.dataset)
    embedder = build_embedder(config)
    for name in changes:  # before the first step, so --compile traces the changed model
        CHANGES[name](embedder)
    embedder.train()
    loss_fn = build_loss("infonce", 0.05, 0.2)
    trainable = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr)
    job = Distributed()
    shape = model_shape(embedder)

    def step(index: int) -> tuple[float, float, tuple[int, int, int]]:
        """(step seconds, of which tokenizing, token counts); ``forward_backward`` tokenizes
        inside the timed step, and the same call is timed alone beforehand."""
        texts = batch_texts(data.batch(index, config.batch_size, config.seed), True)
        began = time.perf_counter()
        ids = embedder.tokenize(texts[0], "query") + embedder.tokenize(
            texts[1] + texts[2], "document"
        )
        tokenize_s = time.perf_counter() - began
        tick = time.perf_counter()
        forward_backward(embedder, loss_fn, texts, job, [len(texts[0])])
        with torch.profiler.record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - tick, tokenize_s, pass_tokens(embedder, ids, len(texts[0]))

    warmup = 3 if config.compile else 1
    for index in range(warmup):
        step(index)
    times, tokens = [], []
    for index in range(warmup, warmup + steps):
        seconds, _, counts = step(index)
        times.append(seconds)
        tokens.append(counts)
    median = statistics.median(times)
    real, padded, attended = (statistics.mean(c[i] for c in tokens) for i in range(3))
    figures = {"steps": steps, "step_s": [round(t, 3) for t in times], "median_step_s": median,
               "real_tokens_per_s": real / median, "padded_tokens_per_s": padded / median,
               "flops_per_s": flops(shape, real, attended, training=True) / median,
               "triplets_per_s": config.batch_size / median, "options": options,
               "changes": list(changes)}  # fmt: skip
    return figures, embedder, step, shape


def encoding_run(embedder, shape: dict) -> dict:
    from lmembed.data import load_sts

    task = load_sts("stsb", data_dir())
    texts = list(dict.fromkeys(task.sentences1 + task.sentences2))
    ids = embedder.tokenize(texts)
    embedder.encode_ids(ids[:64], batch_size=32)
    began = time.perf_counter()
    embedder.encode_ids(ids, batch_size=32)
    seconds = time.perf_counter() - began
    real, padded, attended = pass_tokens(embedder, ids, 32)
    return {"texts": len(texts), "seconds": seconds, "real_tokens_per_s": real / seconds,
            "padded_tokens_per_s": padded / seconds,
            "flops_per_s": flops(shape, real, attended, training=False) / seconds}  # fmt: skip


CATEGORIES = (
    ("attention", ("attention", "softmax", "_efficient_attention", "flash")),
    ("dtype casts and copies", ("aten::to", "aten::_to_copy", "aten::copy_")),
)
# The categories whose kernels do the FLOPs the model formula counts.
COUNTED_KERNELS = ("matmul (base)", "matmul (LoRA)", "attention")


def classify(name: str, shapes: list, lora_rank: int) -> str:
    """The category of one operator (by name; LoRA matmuls have the rank as a dimension;
    batched matmuls are eager attention's QK^T and AV, linear layers run mm/addmm)."""
    if name == "aten::bmm":
        return "attention"
    if name in ("aten::mm", "aten::addmm"):
        dims = {d for shape in shapes for d in shape}
        return "matmul (LoRA)" if lora_rank in dims else "matmul (base)"
    for category, keys in CATEGORIES:
        if any(key in name for key in keys):
            return category
    return "other kernels"


def _inside(event, name: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == name:
            return True
        parent = parent.cpu_parent
    return False


def profile(step, steps: int, lora_rank: int = 8) -> dict:
    """Share of a training step's wall time per category, from operator self times
    (tokenization: the same call timed alone, since it runs no operators)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    wall = 0.0
    seconds: dict[str, float] = defaultdict(float)
    other: dict[str, float] = defaultdict(float)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for index in range(steps):
            step_s, tokenize_s, _ = step(1000 + index)
            wall += step_s
            seconds["tokenization"] += tokenize_s
    for event in prof.events():
        if event.name == "optimizer":
            seconds["optimizer"] += event.cpu_time_total / 1e6
        elif not _inside(event, "optimizer"):
            category = classify(event.name, event.input_shapes, lora_rank)
            seconds[category] += event.self_cpu_time_total / 1e6
            if category == "other kernels":
                other[event.name] += event.self_cpu_time_total / 1e6
    seconds["Python and framework (the rest)"] = max(wall - sum(seconds.values()), 0.0)
    shares = {name: round(value / wall, 4) for name, value in sorted(seconds.items(),
              key=lambda item: -item[1])}  # fmt: skip
    top = sorted(other.items(), key=lambda item: -item[1])[:8]
    return {"shares": shares, "other_kernels": {name: round(v / wall, 4) for name, v in top}}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument(
        "--fast-options", nargs="*", default=FAST_OPTIONS,
        help="training options (booleans) of the second training row; none here and in "
        "--fast-changes: skip it",
    )  # fmt: skip
    parser.add_argument(
        "--fast-changes", nargs="*", default=FAST_CHANGES, choices=sorted(CHANGES),
        help="bench/lora_candidates.py changes applied in the second training row",
    )  # fmt: skip
    return parser


def measure(args: argparse.Namespace) -> dict:
    training, embedder, step, shape = training_run(args.steps, [])
    peak = peaks((32 * 16, shape["hidden"], shape["intermediate"]))
    encoding = encoding_run(embedder, shape)
    breakdown = profile(step, args.profile_steps)
    fast = None
    if args.fast_options or args.fast_changes:
        fast = training_run(args.steps, args.fast_options, args.fast_changes)[0]
    return {"environment": environment(), "model": embedder.spec.model,
            "dtype": embedder.spec.dtype, "shape": shape, "peak_gflops": peak,
            "training": training, "training_fast": fast, "encoding": encoding,
            "profile": breakdown}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    publish(NAME, HEADING, measure(parser().parse_args(argv)), render)


def option_flags(options: Sequence[str], changes: Sequence[str] = ()) -> list[str]:
    """``compile`` -> ``--compile``, ``use_fast_dropout`` -> ``use_fast_dropout()``: the row
    names the flags it used and the bench/lora_candidates.py functions it applied."""
    return [f"`--{name.replace('_', '-')}`" for name in options] + [
        f"`{name}()`" for name in changes
    ]


def ceiling_text(result: dict, peak: float) -> str:
    """The fraction of peak training would reach if only the counted FLOPs' kernels took
    time: at the matmuls' own speed on these shapes, the bound that removing overhead gives."""
    shares = result["profile"]["shares"]
    counted = sum(shares.get(name, 0.0) for name in COUNTED_KERNELS)
    achieved = result["training"]["flops_per_s"] / 1e9
    ceiling = achieved / counted
    return (
        f"Ceiling without overhead: the kernels that do the counted FLOPs (base and LoRA "
        f"matmuls, attention) take {100 * counted:.1f}% of a training step, so they run at "
        f"{achieved:.0f} / {counted:.3f} = {ceiling:.0f} GFLOP/s, **{100 * ceiling / peak:.0f}% "
        "of the peak**: the fraction training would reach if every other kernel, cast and "
        "Python moment cost nothing. Going past it needs faster matmuls on the step's own "
        "shapes (narrow products such as the 256-wide key/value projections, and the "
        "backward's transposed operands; the peak is the best of two wide products), not "
        "only less overhead."
    )


def render(results: dict) -> str:
    dtype = results["dtype"]
    peak = max(results["peak_gflops"][dtype].values())
    peaks_text = ", ".join(f"{max(v.values()):.0f} {k}" for k, v in results["peak_gflops"].items())
    rows = []
    for name in ("training", "training_fast", "encoding"):
        run = results.get(name)
        if run is None:
            continue
        achieved = run["flops_per_s"] / 1e9
        training = name != "encoding"
        label = name
        if training:  # earlier results have no "changes"
            label = " ".join(["training", *option_flags(run["options"], run.get("changes", []))])
        rows.append([label, f"{run['median_step_s']:.2f}" if training else "",
                     f"{run['real_tokens_per_s']:.0f}", f"{run['padded_tokens_per_s']:.0f}",
                     f"{achieved:.0f}", f"{100 * achieved / peak:.0f}%"])  # fmt: skip
    shape = results["shape"]
    return "\n".join([
        f"{results['model']} ({dtype}, what `--dtype auto` chose here): N = "
        f"{shape['linear_params'] / 1e6:.1f}M linear weights in {shape['layers']} layers, "
        f"attention width {shape['attention_width']}. Measured `torch.matmul` peak in the same "
        f"run: {peaks_text} GFLOP/s (per shape: {results['peak_gflops']}); fractions below are "
        f"of the {dtype} peak. Training: {results['training']['steps']} steps "
        "of 32 triplets (median step "
        f"{results['training']['median_step_s']:.2f} s, "
        f"{results['training']['triplets_per_s']:.2f} triplets/s); encoding: the "
        f"{results['encoding']['texts']} STSb test sentences, batch 32. FLOPs per token as in "
        "`bench/bench_roofline.py`'s docstring (training = 4N + 3 x attention, encoding = "
        "2N + attention), counted on real tokens.",
        "",
        table(["pass", "median step s", "real tokens/s", "padded tokens/s", "model GFLOP/s",
               f"of {dtype} peak"], rows),  # fmt: skip
        "",
        "Where a training step's time goes (`torch.profiler`, operator self time as a share of "
        "the step's wall time):",
        "",
        table(["category", "share"],
              [[k, f"{100 * v:.1f}%"] for k, v in results["profile"]["shares"].items()]),
        "",
        "The largest of the other kernels: " + ", ".join(
            f"`{k}` {100 * v:.1f}%" for k, v in results["profile"]["other_kernels"].items()
        ) + ".",
        "",
        ceiling_text(results, peak),
        "",
        environment_block(results["environment"], target="python -m bench.bench_roofline"),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
