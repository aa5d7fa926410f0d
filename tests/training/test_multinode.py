"""Two "machines" on loopback: ``torchrun --nnodes 2`` with the c10d rendezvous.

Two launchers (one process each) meet at 127.0.0.1 as a real two-node job would
(each would run on its own machine with the first one's address); training and
corpus encoding must give what one process gives. Every launcher is bounded in time.
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
from test_encoding import _options, assert_same_shards, corpus_texts, write_txt

from lmembed.encoding import encode_corpus
from lmembed.model import Embedder

TESTS = Path(__file__).parents[1]
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(TESTS.parent)}  # fmt: skip


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
