"""Two "machines" on loopback: ``torchrun --nnodes 2`` with the c10d rendezvous.

Two launchers (one process each) meet at 127.0.0.1 as a real two-node job would
(each would run on its own machine with the first one's address); training and
corpus encoding must give what one process gives. Every launcher is bounded in time.

Run as a script (``torchrun ... test_multinode.py one-step MODEL DATA OUT``) this file is
the program each node runs for the one-step gradient check.
"""

import json
import os
import socket
import subprocess
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import GRADIENT_CASES, LOSSES, MINI_BATCH, _write_triplets, one_step
from test_encoding import _options, assert_same_shards, corpus_texts, write_txt

from lmembed.encoding import encode_corpus
from lmembed.model import Embedder
from lmembed.training.distributed import Distributed, process_group

TESTS = Path(__file__).parents[1]
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    # tests/ too: run as a script, this file imports its sibling test modules' helpers.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}  # fmt: skip


def _two_nodes(program: list[str]) -> None:
    """Run ``program`` on 2 nodes x 1 process; fail with both logs unless both succeed."""
    port, run_id = _free_port(), uuid.uuid4().hex[:8]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}",
                "--max-restarts=0"]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [*launcher, *program],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    codes = [node.returncode for node in nodes]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)


def _train_flags(model, data, output) -> list[str]:
    # Dropout 0: each rank draws its own masks, so only without dropout do 2 ranks
    # compute exactly the one-process step (see test_distributed.py).
    return [f"--model={model}", f"--data={data}", f"--output={output}", "--steps=3",
            "--batch-size=8", "--lr=1e-3", "--warmup=1", "--dtype=fp32", "--lora-dropout=0",
            "--save-every=0", "--seed=0"]  # fmt: skip


@pytest.mark.slow
def test_two_nodes_train_the_single_process_adapter(tiny_llama, triplets_csv, tmp_path):
    single = subprocess.run(
        [sys.executable, "-m", "lmembed", "train",
         *_train_flags(tiny_llama, triplets_csv, tmp_path / "single")],
        env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    flags = _train_flags(tiny_llama, triplets_csv, tmp_path / "two")
    _two_nodes(["-m", "lmembed", "train", *flags])
    a = load_file(str(tmp_path / "single" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    assert any((a[k] != 0).any() for k in a if "lora_B" in k), "training did not move LoRA B"


STEP_CASES = [
    (case, mini, loss) for case in GRADIENT_CASES for mini in MINI_BATCH for loss in LOSSES
]


def _step_file(root: Path, case: str, mini_batch: str, loss_name: str, rank: int) -> Path:
    return root / f"{case}-{mini_batch}-{loss_name}-rank{rank}.pt"


def _one_step_on_this_node(model: str, data: str, root: str) -> None:
    """What each node runs under torchrun: one step's loss and averaged gradients
    (``test_distributed.one_step``, dropout 0) for every case, in the job that
    ``process_group`` joins from torchrun's environment, as ``lmembed train`` does."""
    torch.set_num_threads(1)
    with process_group() as job:
        for case, mini_batch, loss_name in STEP_CASES:
            indices = GRADIENT_CASES[case]
            loss, grads = one_step(model, data, job, indices, MINI_BATCH[mini_batch], loss_name)
            result = (job.world_size, loss, grads)
            torch.save(result, _step_file(Path(root), case, mini_batch, loss_name, job.rank))


@pytest.fixture(scope="module")
def two_node_steps(tiny_llama, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("two_node_steps")
    data_path = root / "triplets.csv"
    _write_triplets(data_path)
    _two_nodes([__file__, "one-step", str(tiny_llama), str(data_path), str(root)])
    return root, data_path


@pytest.mark.slow
@pytest.mark.parametrize(("case", "mini_batch", "loss_name"), STEP_CASES)
def test_two_nodes_compute_the_single_process_gradients(
    two_node_steps, tiny_llama, case, mini_batch, loss_name
):
    """One step on 2 nodes (4 + 4 or 3 + 2 triplets, negatives gathered over the c10d
    job) against one process holding the whole batch: the loss and every gradient (LoRA,
    learned temperature) after ``average_gradients``. Gradients, not adapters after Adam
    steps (~ lr * sign(g)), so a wrong gradient scale fails here."""
    root, data_path = two_node_steps
    loss, grads = one_step(
        tiny_llama, data_path, Distributed(), GRADIENT_CASES[case], MINI_BATCH[mini_batch],
        loss_name,
    )  # fmt: skip
    for rank in range(2):
        world_size, rank_loss, rank_grads = torch.load(
            _step_file(root, case, mini_batch, loss_name, rank)
        )
        assert world_size == 2
        assert rank_loss == pytest.approx(loss, abs=1e-5)
        assert rank_grads.keys() == grads.keys()
        for key, ref in grads.items():
            scale = ref.abs().max().item()
            torch.testing.assert_close(
                rank_grads[key], ref, rtol=1e-5, atol=1e-5 * scale,
                msg=lambda m, k=key, r=rank: f"rank {r}, {k}: {m}",
            )  # fmt: skip
    assert all(g.abs().max() > 1e-4 for g in grads.values()), "a gradient is ~zero"


@pytest.mark.slow
def test_two_nodes_encode_the_single_process_shards(tiny_llama, tmp_path):
    source = write_txt(tmp_path / "corpus.txt", corpus_texts())
    embedder = Embedder.from_pretrained(model=str(tiny_llama), dtype="fp32")
    encode_corpus(embedder, _options(source, tmp_path / "single", precision="int8",
                                     calibration_size=16))  # fmt: skip
    options = _options(source, tmp_path / "two", precision="int8", calibration_size=16)
    driver = str(TESTS / "test_encoding_driver.py")
    _two_nodes([driver, str(tiny_llama), json.dumps(asdict(options))])
    assert_same_shards(tmp_path / "two", tmp_path / "single", ranks=[0, 1, 0, 1, 0, 1])


if __name__ == "__main__":
    if sys.argv[1:2] != ["one-step"]:
        sys.exit(f"usage: {sys.argv[0]} one-step MODEL DATA OUT (under torchrun)")
    _one_step_on_this_node(*sys.argv[2:])
