"""Where lmembed finds its default training data under a data dir (``$LMEMBED_DATA_DIR``)."""

from __future__ import annotations

from pathlib import Path

from lmembed.data.triplets import HUB_NLI

# The full SimCSE set first (drop it in to reproduce the paper), then the offline stand-in.
NLI_FILES = ("nli/nli_for_simcse.csv", "nli/snli_devtest_triplets_tok.csv.gz")


def find_training_data(data_dir: Path | None) -> str:
    """The full SimCSE set if present, else the offline SNLI stand-in, else the hub id."""
    for name in NLI_FILES:
        if data_dir is not None and (data_dir / name).is_file():
            return str(data_dir / name)
    return HUB_NLI.path
