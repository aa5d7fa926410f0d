"""A runnable script for the encoding tests: ``encode_corpus`` in its own process.

``python tests/test_encoding_driver.py MODEL OPTIONS_JSON [--die-at K]`` (also under
``torchrun``); ``--die-at K`` SIGKILLs the process after shard K's data files are
written and before its entry is, the worst moment for a resume. No tests here.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch


def main(argv: list[str]) -> None:
    import lmembed.encoding as encoding
    from lmembed.model import Embedder

    torch.set_num_threads(1)
    model, options = argv[0], json.loads(argv[1])
    if "--die-at" in argv:
        die_at = int(argv[argv.index("--die-at") + 1])
        real = encoding._write_entry

        def write_or_die(path, entry):
            if entry["index"] == die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, entry)

        encoding._write_entry = write_or_die
    embedder = Embedder.from_pretrained(model=model, dtype="fp32")
    encoding.encode_corpus(embedder, encoding.EncodeCorpusOptions(**options))


if __name__ == "__main__":
    main(sys.argv[1:])
