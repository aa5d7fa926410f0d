"""Multi-process training under gloo, with real processes.

One spawned 2-process group (module fixture) computes one-step gradients, trains
an uninterrupted run, and trains the same run again until it SIGKILLs itself at
step 3; the resume then goes through the real ``torchrun -m lmembed train`` CLI.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from lmembed.data.sampler import batch_indices
from lmembed.data.training import Batch, TrainingData
from lmembed.data.triplets import load_triplets
from lmembed.losses import build_loss
from lmembed.training.config import TrainConfig
from lmembed.training.distributed import (
    Distributed,
    average_gradients,
    check_sharding,
    mean_across,
)
from lmembed.training.run_dir import read_metrics
from lmembed.training.trainer import (
    batch_texts,
    build_embedder,
    forward_backward,
    seed_everything,
    train,
)

WORLD = 2
N_TRIPLETS = 29  # batches of 8: 8, 8, 8, then 5, split 3 + 2 over the ranks
# Global batches for the gradient check: 8 triplets (4 per rank) and an uneven 5 (3 + 2).
GRADIENT_CASES = {"even8": list(range(8)), "uneven5": [9, 3, 17, 21, 11]}
MINI_BATCH = {"plain": None, "gradcache2": 2}
LOSSES = ("infonce", "symmetric-infonce")  # the symmetric one gathers the anchors too


def _write_triplets(path) -> None:
    subjects = ["a man", "a woman", "the dog", "the cat", "two children", "three people"]
    actions = ["is sitting", "is running", "is eating", "is playing", "is walking"]
    rows = ["sent0,sent1,hard_neg"]
    for i in range(N_TRIPLETS):
        s, a, other = subjects[i % 6], actions[i % 5], actions[(i + 2) % 5]
        rows.append(f"{s} {a} near car {i} .,{s} {a} .,{s} {other} inside .")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _run_config(model, data, output) -> TrainConfig:
    """Dropout stays on (0.1): resume must restore every rank's own RNG stream."""
    return TrainConfig.from_flat(
        model=str(model), data=str(data), output=str(output), steps=4, batch_size=8,
        lr=1e-3, warmup=1, dtype="fp32", save_every=2, seed=0,
    )  # fmt: skip


def one_step(model, data_path, ctx: Distributed, indices, mini_batch_size, loss_name):
    """Loss and averaged gradients (LoRA and a learned temperature's) of one step on the
    global batch ``indices``.

    LoRA dropout is 0 here: dropout masks are drawn per forward pass from each
    process's RNG, and a rank embedding 4 triplets cannot draw the masks a single
    process draws for the same rows inside a batch of 8, so with dropout the two
    runs would compute different (equally valid) losses.
    """
    config = TrainConfig.from_flat(
        model=str(model), output="unused", dtype="fp32", lora_dropout=0.0
    )
    seed_everything(0)
    embedder = build_embedder(config).train()
    generator = torch.Generator().manual_seed(1)
    trainable = [p for p in embedder.parameters() if p.requires_grad]
    for param in trainable:  # random A *and* B: peft's zero B would zero A's gradient
        param.data = torch.randn(param.shape, generator=generator) * 0.1
    data = load_triplets(str(data_path))
    rows = [data[i] for i in indices]
    full = Batch([a for a, _, _ in rows], [p for _, p, _ in rows], [[n] for *_, n in rows], "t")
    local, sizes = ctx.shard(full)
    batch = batch_texts(local, hard_negatives=True)
    loss_fn = build_loss(loss_name, 0.05, 0.2, learn_temperature=True)
    loss = forward_backward(embedder, loss_fn, batch, ctx, sizes, mini_batch_size)
    value = mean_across(loss, ctx)
    average_gradients([*trainable, loss_fn.log_scale], ctx)
    grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}
    grads["temperature"] = loss_fn.log_scale.grad.clone()
    return value, grads


def _kill_at_step(step_to_die, original):
    def batch(self, step, batch_size, seed):
        if step == step_to_die:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, step, batch_size, seed)

    return batch


def _worker(rank, port, model, data_path, root):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    ctx = Distributed(rank, WORLD)
    for case, indices in GRADIENT_CASES.items():
        for name, mini_batch_size in MINI_BATCH.items():
            for loss_name in LOSSES:
                result = one_step(model, data_path, ctx, indices, mini_batch_size, loss_name)
                torch.save(result, root / f"{case}-{name}-{loss_name}-rank{rank}.pt")
    config = _run_config(model, data_path, root / "straight")
    train(config)
    TrainingData.batch = _kill_at_step(2, TrainingData.batch)
    train(config.replace(output=str(root / "resumed")))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_runs(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    data_path = root / "triplets.csv"
    _write_triplets(data_path)
    args = (_free_port(), tiny_llama, data_path, root)
    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        mp.spawn(_worker, args=args, nprocs=WORLD)
    return root, data_path


@pytest.mark.slow
@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("mini_batch", sorted(MINI_BATCH))
@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_two_processes_match_one_process_full_batch(
    two_process_runs, tiny_llama, case, mini_batch, loss_name
):
    """2 ranks x 4 (or 3 + 2) triplets, negatives gathered: the loss and the gradients
    (LoRA, learned temperature) of one process holding the whole batch (plain and with
    GradCache; InfoNCE and the symmetric one)."""
    root, data_path = two_process_runs
    indices = GRADIENT_CASES[case]
    loss, grads = one_step(tiny_llama, data_path, Distributed(), indices, None, loss_name)
    for rank in range(WORLD):
        saved = root / f"{case}-{mini_batch}-{loss_name}-rank{rank}.pt"
        rank_loss, rank_grads = torch.load(saved)
        assert rank_loss == pytest.approx(loss, abs=1e-5)
        assert rank_grads.keys() == grads.keys()
        for key in grads:
            torch.testing.assert_close(rank_grads[key], grads[key], rtol=0, atol=1e-5, msg=key)
    assert all(g.abs().max() > 1e-4 for g in grads.values()), "a gradient is ~zero"


@pytest.mark.slow
def test_kill_and_torchrun_resume_equals_uninterrupted_run(two_process_runs, tiny_llama):
    root, data_path = two_process_runs
    killed = json.loads((root / "resumed" / "checkpoint" / "trainer_state.json").read_text())
    assert killed["step"] == 2 and killed["world_size"] == WORLD
    assert not (root / "resumed" / "adapter_model.safetensors").exists()

    config = _run_config(tiny_llama, data_path, root / "resumed")
    flags = [
        f"--{key.replace('_', '-')}={value[0] if isinstance(value, list) else value}"
        for key, value in config.to_dict().items()
        if key in ("model", "data", "output", "steps", "batch_size", "lr", "warmup", "dtype",
                   "save_every", "seed")
    ]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*torchrun, f"--nproc_per_node={WORLD}", "-m", "lmembed", "train", *flags, "--resume"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    straight = load_file(str(root / "straight" / "adapter_model.safetensors"))
    resumed = load_file(str(root / "resumed" / "adapter_model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)

    def log(run):
        return read_metrics(root / run / "log.jsonl")

    assert [r["step"] for r in log("resumed")] == [1, 2, 3, 4]  # rank 0 alone wrote it
    assert [r["loss"] for r in log("resumed")] == [r["loss"] for r in log("straight")]


@pytest.mark.slow
def test_resume_with_another_world_size_is_refused(two_process_runs, tiny_llama):
    root, data_path = two_process_runs
    config = _run_config(tiny_llama, data_path, root / "straight").replace(resume=True)
    with pytest.raises(ValueError, match="written by 2 process.*nproc_per_node 2"):
        train(config)


def test_shards_partition_every_batch_of_an_epoch():
    """Every triplet once per epoch, whatever the world size, tail batch included."""
    for world_size in (1, 2, 3):
        seen = []
        for step in range(4):  # 30 triplets / 8: batches of 8, 8, 8, 6
            indices = batch_indices(30, 8, seed=3, step=step)
            texts = [str(i) for i in indices]
            batch = Batch(texts, texts, [[t] for t in texts], "t")
            shards = [Distributed(rank, world_size).shard(batch) for rank in range(world_size)]
            assert sum((part.anchors for part, _ in shards), []) == texts
            sizes = shards[0][1]
            assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(indices)
            seen += indices
        assert sorted(seen) == list(range(30))


def test_sharding_errors_name_the_fix():
    with pytest.raises(ValueError, match="--batch-size 9 .* multiple of 2"):
        check_sharding(9, [100], 10, world_size=2)
    with pytest.raises(ValueError, match="last batch of each epoch holds 1 example"):
        check_sharding(8, [17], 3, world_size=2)
    check_sharding(8, [17], 2, world_size=2)  # never reaches the tail batch
    check_sharding(9, [17], 3, world_size=1)
