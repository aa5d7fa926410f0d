"""Per-token agreement of sentence-transformers' OpenVINO export with its torch model.

``bench_backends.py`` found sentence-transformers' OpenVINO backend on gemma-3-270m far from
its torch vectors (lowest cosine 0.04); this shows where: the cosine of each token's last
hidden state, OpenVINO (pinned to f32) against torch, on one unpadded text. Runs in the
OpenVINO environment (``bench/st_backends_env.sh``) on a sentence-transformers folder:

    .venv/bin/lmembed export --model gemma-3-270m --format sentence-transformers \\
        --dtype fp32 --output /tmp/gemma-st
    .venv-st-openvino/bin/python -m bench.diagnostics.st_openvino_tokens /tmp/gemma-st
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

TEXT = "Two dogs run in the snow near a small red house."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a sentence-transformers model folder")
    folder = parser.parse_args().folder
    reference = SentenceTransformer(folder, device="cpu", backend="torch")
    pinned = {"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}}
    exported = SentenceTransformer(folder, device="cpu", backend="openvino", model_kwargs=pinned)
    features = reference[0].tokenizer([TEXT], return_tensors="pt")
    with torch.no_grad():
        want = reference[0].auto_model(**features).last_hidden_state[0].numpy()
    got = exported[0].auto_model(**features).last_hidden_state[0].detach().numpy()
    cosine = (want * got).sum(-1) / np.linalg.norm(want, axis=-1) / np.linalg.norm(got, axis=-1)
    print(f"{TEXT!r}: {len(cosine)} tokens; cosine per position, OpenVINO f32 against torch:")
    print(" ".join(f"{c:.3f}" for c in cosine))


if __name__ == "__main__":
    main()
