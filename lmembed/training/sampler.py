"""The batch order used by training lives in ``lmembed.data.sampler`` (the data layer must
not import the training package); these names stay importable from here."""

from lmembed.data.sampler import EpochPlan, batch_indices, epoch_plan, shard_sizes, steps_per_epoch

__all__ = ["EpochPlan", "batch_indices", "epoch_plan", "shard_sizes", "steps_per_epoch"]
