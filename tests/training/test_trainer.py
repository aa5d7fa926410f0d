"""The training loop on a tiny model: what changes, saving, resuming, failures."""

import json

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from training_checks import crash_and_resume_matches

from lmembed.data.sampler import batch_indices
from lmembed.model.embedder import Embedder
from lmembed.model.loading import load_backbone
from lmembed.model.lora import LoraOptions, attach_lora
from lmembed.training import trainer as trainer_module
from lmembed.training.config import TrainConfig, config_from_dict, load_config
from lmembed.training.run_dir import read_metrics
from lmembed.training.trainer import NonFiniteLossError, build_embedder, train


def _config(model, data, output, **changes) -> TrainConfig:
    base = dict(
        model=str(model),
        data=str(data),
        output=str(output),
        steps=4,
        batch_size=8,
        lr=1e-3,
        warmup=1,
        dtype="fp32",
        save_every=2,
        seed=0,
    )
    return TrainConfig.from_flat(**{**base, **changes})


def test_only_lora_parameters_change(tiny_llama, triplets_csv, tmp_path, monkeypatch):
    config = _config(tiny_llama, triplets_csv, tmp_path / "run")
    before = {k: v.clone() for k, v in build_embedder(config).model.state_dict().items()}
    captured = {}
    original = Embedder.save_adapter

    def spy(embedder, folder):
        captured["state"] = {k: v.clone() for k, v in embedder.model.state_dict().items()}
        original(embedder, folder)

    monkeypatch.setattr(Embedder, "save_adapter", spy)
    train(config)
    after = captured["state"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "training changed nothing"
    assert all("lora_" in k for k in changed), sorted(changed)
    assert any("lora_B" in k for k in changed)


def test_adapter_reload_reproduces_embeddings(tiny_llama, triplets_csv, tmp_path, monkeypatch):
    output = tmp_path / "run"
    config = _config(tiny_llama, triplets_csv, output, prompt="{s} is: ", pooling="mean")
    captured = {}
    original = Embedder.save_adapter

    def spy(embedder, folder):
        original(embedder, folder)
        captured["vectors"] = embedder.encode(["a man is eating .", "the dog"])

    monkeypatch.setattr(Embedder, "save_adapter", spy)
    train(config)
    # Kept separate, as trained, the reload is bit-exact (merged: equal to float rounding,
    # test_inference_merges_lora_into_fp32_weights_with_the_same_vectors).
    reloaded = Embedder.from_pretrained(adapter=output, merge=False)
    assert reloaded.spec.prompt == "{s} is: " and reloaded.spec.pooling == "mean"
    assert reloaded.spec.model == str(tiny_llama)
    np.testing.assert_array_equal(
        reloaded.encode(["a man is eating .", "the dog"]), captured["vectors"]
    )
    log = read_metrics(output / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in log)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"ema_decay": 0.5},
        {"temperature_lr": 0.05},
        {"loss": "symmetric-infonce"},
    ],
    ids=[
        "plain",
        "weight-average",
        "learned-temperature",
        "symmetric-loss",
    ],
)
def test_kill_and_resume_equals_uninterrupted_run(
    tiny_llama, triplets_csv, tmp_path, monkeypatch, options
):
    straight = _config(tiny_llama, triplets_csv, tmp_path / "straight", steps=5, **options)
    log = crash_and_resume_matches(straight, tmp_path / "resumed", monkeypatch)
    if "temperature_lr" in options:  # restored from the checkpoint, not restarted at 0.05
        temperatures = [r["temperature"] for r in read_metrics(tmp_path / "straight" / "log.jsonl")]
        assert [r["temperature"] for r in log] == temperatures
        assert temperatures[-1] != pytest.approx(0.05, abs=1e-3)


def test_weight_average_is_the_bias_corrected_ema_of_each_steps_weights(
    tiny_llama, triplets_csv, tmp_path, monkeypatch
):
    """``--ema-decay d`` saves sum_i (1-d) d^(t-i) w_i / (1-d^t) over the weights after
    each step, and leaves training itself unchanged: ``last-step/`` equals a plain run."""
    decay, steps = 0.6, 3
    after_step = []
    original = trainer_module.save_checkpoint_on_main

    def snapshot(state, folder, step, job):
        after_step.append({k: v.clone() for k, v in get_peft_model_state_dict(state.model).items()})
        original(state, folder, step, job)

    monkeypatch.setattr(trainer_module, "save_checkpoint_on_main", snapshot)
    config = _config(tiny_llama, triplets_csv, tmp_path / "plain", steps=steps, save_every=1)
    train(config)
    after_step.clear()
    train(config.replace(output=str(tmp_path / "ema"), ema_decay=decay))
    assert len(after_step) == steps  # steps 1..t-1, then the final checkpoint

    plain = load_file(str(tmp_path / "plain" / "adapter_model.safetensors"))
    last = load_file(str(tmp_path / "ema" / "last-step" / "adapter_model.safetensors"))
    averaged = load_file(str(tmp_path / "ema" / "adapter_model.safetensors"))
    assert plain.keys() == last.keys() == averaged.keys()
    norm = 1 - decay**steps
    for key in plain:
        torch.testing.assert_close(last[key], plain[key], rtol=0, atol=0)
        expected = (
            sum(
                (1 - decay) * decay ** (steps - i) * after_step[i - 1][key].float()
                for i in range(1, steps + 1)
            )
            / norm
        )
        torch.testing.assert_close(averaged[key], expected, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(averaged[k], plain[k]) for k in plain)
    assert Embedder.from_pretrained(adapter=tmp_path / "ema" / "last-step").spec.model


class _RunsCode:
    """A pickle that runs code when loaded (``os.system``) if unpickling allows it."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_checkpoint_that_would_run_code(tiny_llama, triplets_csv, tmp_path):
    config = _config(tiny_llama, triplets_csv, tmp_path / "run", steps=4, save_every=2)
    train(config)
    training = tmp_path / "run" / "checkpoint" / "training.pt"
    state = torch.load(training, weights_only=False)  # ours: plain values, tensors, numpy RNG
    marker = tmp_path / "code-ran"
    torch.save({**state, "payload": _RunsCode(marker)}, training)
    with pytest.raises(ValueError, match=r"training.pt: refused to load: it holds posix.system"):
        train(config.replace(resume=True, steps=4))
    assert not marker.exists(), "the payload ran"
    torch.save(state, training)  # the checkpoint as lmembed wrote it loads
    train(config.replace(resume=True))


def test_resume_refuses_changed_options(tiny_llama, triplets_csv, tmp_path):
    config = _config(tiny_llama, triplets_csv, tmp_path / "run", steps=2)
    train(config)
    with pytest.raises(ValueError, match="batch_size"):
        train(config.replace(resume=True, batch_size=4))
    for shape in ({"lora_targets": ["all-linear"]}, {"lora_r": 4}, {"lora_alpha": 8}):
        # An adapter of another shape or scale: loading its weights would fail or mislead.
        with pytest.raises(ValueError, match=f"options changed.*{next(iter(shape))}"):
            train(config.replace(resume=True, **shape))


def test_non_finite_loss_stops_and_keeps_checkpoint(tiny_llama, triplets_csv, tmp_path):
    output = tmp_path / "run"
    config = _config(tiny_llama, triplets_csv, output, steps=4, save_every=1)
    original = trainer_module.build_loss

    class NaNAtThirdCall(torch.nn.Module):
        def __init__(self, loss):
            super().__init__()
            self.loss, self.calls = loss, 0

        def forward(self, q, p, n=None):
            self.calls += 1
            value = self.loss(q, p, n)
            return value * float("nan") if self.calls == 3 else value

    def exploding(*args, **kwargs):
        return NaNAtThirdCall(original(*args, **kwargs))

    trainer_module.build_loss = exploding
    try:
        with pytest.raises(NonFiniteLossError, match="step 3"):
            train(config)
    finally:
        trainer_module.build_loss = original
    state = json.loads((output / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2


def test_unknown_lora_target_lists_linear_modules(tiny_llama):
    backbone, _ = load_backbone(str(tiny_llama), "fp32")
    with pytest.raises(ValueError, match="its linear modules are: .*q_proj"):
        attach_lora(backbone, LoraOptions(targets=["query_key_value"]))


def test_config_yaml_with_flag_overrides(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: gemma-3-270m\nlr: 5.0e-4\nsteps: 10\nlora_targets: [q_proj]\n")
    config = load_config(path, lr=1e-3, batch_size=None)
    assert config.lr == 1e-3 and config.steps == 10 and config.batch_size == 32
    assert config.lora.targets == ["q_proj"]
    with pytest.raises(ValueError, match="unknown option.*learning_rate"):
        config_from_dict({"learning_rate": 1e-4})
    with pytest.raises(ValueError, match="pooling"):
        TrainConfig.from_flat(pooling="max")


def test_sampler_covers_each_triplet_once_per_epoch():
    seen = [i for step in range(4) for i in batch_indices(30, 8, seed=3, step=step)]
    assert sorted(seen) == list(range(30))
    assert batch_indices(30, 8, 3, 4) != batch_indices(30, 8, 3, 0)
    assert batch_indices(30, 8, 3, 5) == batch_indices(30, 8, 3, 5)


def test_matryoshka_training_saves_its_dims_and_uses_the_summed_loss(
    tiny_llama, triplets_csv, tmp_path, monkeypatch
):
    from lmembed.losses import MatryoshkaLoss

    built = []
    original = trainer_module.build_loss

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(trainer_module, "build_loss", spy)
    output = tmp_path / "run"
    config = _config(tiny_llama, triplets_csv, output, steps=2, matryoshka_dims=[16, 8])
    train(config)
    assert isinstance(built[0], MatryoshkaLoss) and built[0].dims == [16, 8]
    assert Embedder.from_pretrained(adapter=output).spec.matryoshka_dims == [16, 8]
    with pytest.raises(ValueError, match="needs --matryoshka-dims"):
        config.replace(matryoshka_dims=[], matryoshka_weights=[1.0])


@pytest.mark.slow
def test_compile_trains_the_same_adapter(tiny_llama, triplets_csv, tmp_path):
    """``--compile`` changes how the backbone runs, not what it computes: same losses and
    adapter as eager training, up to the fused kernels' rounding. Without dropout: compiled
    dropout draws its masks from inductor's own generator (same distribution, other draws)."""
    eager = _config(
        tiny_llama, triplets_csv, tmp_path / "eager", steps=2, save_every=0, lora_dropout=0.0
    )
    train(eager)
    train(eager.replace(output=str(tmp_path / "compiled"), compile=True))
    losses = [
        [r["loss"] for r in read_metrics(tmp_path / name / "log.jsonl")]
        for name in ("eager", "compiled")
    ]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    a = load_file(str(tmp_path / "eager" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


def _attention(embedder: Embedder) -> str:
    return embedder.model.get_base_model().config._attn_implementation


def test_attn_implementation_auto_picks_eager_for_bf16_on_cpu(
    tiny_llama, triplets_csv, tmp_path, monkeypatch
):
    """auto: eager for bf16 training on a CPU (it won the paired step benchmark there), the
    loaded kernel (sdpa) otherwise; an explicit choice always applies."""
    monkeypatch.setattr(trainer_module, "accelerator", lambda: None)  # the CPU, even on a GPU host
    kernel = {}
    for dtype in ("fp32", "bf16"):
        for choice in ("auto", "sdpa", "eager"):
            config = _config(tiny_llama, triplets_csv, tmp_path, dtype=dtype,
                             attn_implementation=choice)  # fmt: skip
            kernel[dtype, choice] = _attention(build_embedder(config))
    assert kernel == {
        ("fp32", "auto"): "sdpa", ("fp32", "sdpa"): "sdpa", ("fp32", "eager"): "eager",
        ("bf16", "auto"): "eager", ("bf16", "sdpa"): "sdpa", ("bf16", "eager"): "eager",
    }  # fmt: skip
    monkeypatch.setattr(trainer_module, "accelerator", lambda: torch.device("cuda"))
    config = _config(tiny_llama, triplets_csv, tmp_path, dtype="bf16")
    assert trainer_module.attention_kernel(config) is None  # a GPU keeps sdpa
    with pytest.raises(ValueError, match="attn_implementation"):
        _config(tiny_llama, triplets_csv, tmp_path, attn_implementation="flash")


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_eager_and_sdpa_attention_give_the_same_vectors_and_gradients(
    tiny_models, triplets_csv, tmp_path, arch
):
    """The kernel is an implementation detail: same loss and LoRA gradients (fp32)."""
    from lmembed.losses import build_loss
    from lmembed.training.distributed import Distributed
    from lmembed.training.trainer import forward_backward

    texts = (["a man plays a guitar", "two dogs run"], ["music", "dogs outside"],
             ["silence in the hall", "a cat sleeps on the warm sofa"])  # fmt: skip
    results = {}
    for kernel in ("sdpa", "eager"):
        config = _config(tiny_models[arch], triplets_csv, tmp_path, attn_implementation=kernel,
                         lora_dropout=0.0)  # fmt: skip
        torch.manual_seed(0)
        embedder = build_embedder(config).train()
        assert _attention(embedder) == kernel
        for param in embedder.parameters():  # nonzero B, so every LoRA factor gets a gradient
            if param.requires_grad:
                param.data = torch.randn(param.shape, generator=torch.Generator().manual_seed(1))
        loss = forward_backward(embedder, build_loss("infonce", 0.05, 0.2), texts,
                                Distributed(), [2])  # fmt: skip
        grads = {n: p.grad for n, p in embedder.named_parameters() if p.requires_grad}
        results[kernel] = (loss.item(), grads)
    assert results["sdpa"][0] == pytest.approx(results["eager"][0], rel=1e-5)
    for name, grad in results["sdpa"][1].items():
        # Summation order differs between kernels (and between CPUs' vector widths), so
        # single elements near zero differ by ~1e-5 of the largest; the tensor as a whole
        # must agree to float32 rounding, where a wrong mask would be off by O(1).
        reference = results["eager"][1][name]
        assert (grad - reference).norm() <= 1e-5 * reference.norm(), name


def test_freed_memory_goes_back_after_every_step_and_changes_nothing(
    tiny_llama, triplets_csv, tmp_path, monkeypatch
):
    adapters, calls = {}, []
    for release in (True, False):
        returned = trainer_module.return_freed_memory if release else (lambda: None)
        monkeypatch.setattr(trainer_module, "return_freed_memory",
                            lambda f=returned, r=release: (calls.append(r), f()))  # fmt: skip
        output = tmp_path / str(release)
        train(_config(tiny_llama, triplets_csv, output, save_every=0))
        adapters[release] = load_file(output / "adapter_model.safetensors")
    assert calls == [True] * 4 + [False] * 4  # one per step
    for key, value in adapters[True].items():
        torch.testing.assert_close(adapters[False][key], value, rtol=0, atol=0)
