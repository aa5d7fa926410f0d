"""Reading and validating lmembed's inputs; knows nothing about models."""

from lmembed.data.download import DOWNLOAD_TASKS, download, write_sts_tsv, write_triplets_csv
from lmembed.data.errors import DataError
from lmembed.data.sts import (
    ALL_TASKS,
    QUICK_TASKS,
    TASKS,
    STSTask,
    load_sts,
    resolve_data_dir,
    resolve_tasks,
)
from lmembed.data.training import Batch, DataOptions, TrainingData, load_training_data
from lmembed.data.triplets import Triplets, load_triplets

__all__ = [
    "ALL_TASKS",
    "Batch",
    "DOWNLOAD_TASKS",
    "QUICK_TASKS",
    "TASKS",
    "DataError",
    "DataOptions",
    "STSTask",
    "TrainingData",
    "Triplets",
    "download",
    "load_sts",
    "load_training_data",
    "load_triplets",
    "resolve_data_dir",
    "resolve_tasks",
    "write_sts_tsv",
    "write_triplets_csv",
]
