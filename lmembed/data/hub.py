"""The only place lmembed touches the Hugging Face hub for data; everything else reads files."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LOCAL_SUFFIXES = (".csv", ".gz", ".jsonl", ".json", ".parquet", ".tsv")


@dataclass(frozen=True)
class HubSource:
    """Where one table lives on the hub: a dataset id plus config, split or single data file."""

    path: str
    config: str | None = None
    split: str = "test"
    data_files: str | None = None


def looks_like_hub_id(source: str | Path) -> bool:
    """``owner/name`` that is not a local path and has no data-file suffix."""
    text = str(source)
    if Path(text).exists() or text.lower().endswith(_LOCAL_SUFFIXES):
        return False
    return bool(_HUB_ID.match(text))


def load_hub_rows(source: HubSource) -> Iterable[Mapping[str, Any]]:
    """Rows of a hub table via ``datasets.load_dataset``.

    CSV files are read with NA detection off: pandas would otherwise turn sentences
    such as ``"NA"`` or ``"null"`` into missing values.
    """
    import datasets

    kwargs: dict[str, Any] = {}
    if source.data_files and source.data_files.endswith((".csv", ".csv.gz")):
        kwargs = {"na_filter": False, "keep_default_na": False}
    return datasets.load_dataset(
        source.path, source.config, split=source.split, data_files=source.data_files, **kwargs
    )
