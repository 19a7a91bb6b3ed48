"""Shared training utilities: atomic/safe checkpoints, RNG state capture for exact resume,
resumable seeded data order, the steps of a resumable epoch, JSON-lines logs, torchrun setup
and FLOP counting."""

from .checkpoint import (
    SAFE_GLOBALS,
    CheckpointError,
    atomic_path,
    load_checkpoint,
    resume_path,
    save_checkpoint,
    save_last_and_best,
)
from .data import EpochSampler, SeededDataset, sample_seed
from .distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    init_distributed,
    keep_fallback_counters_per_rank,
    leaving_process_group,
    seed_rank,
    teardown_distributed,
    wrap_ddp,
)
from .flops import count_flops, count_params, unfused_attention
from .jsonl import JsonlLogger, read_jsonl
from .loop import RunningMean, fallback_fields, train_epoch
from .rng import capture_rng_state, restore_rng_state, seed_everything, seeded_rng
from .step import optimizer_update, resume_optimizer, resume_scaler

__all__ = [
    "SAFE_GLOBALS",
    "CheckpointError",
    "DistContext",
    "EpochSampler",
    "JsonlLogger",
    "RunningMean",
    "SeededDataset",
    "all_gather_objects",
    "all_reduce_sum",
    "atomic_path",
    "capture_rng_state",
    "count_flops",
    "count_params",
    "fallback_fields",
    "init_distributed",
    "keep_fallback_counters_per_rank",
    "leaving_process_group",
    "load_checkpoint",
    "optimizer_update",
    "read_jsonl",
    "restore_rng_state",
    "resume_optimizer",
    "resume_scaler",
    "resume_path",
    "sample_seed",
    "save_checkpoint",
    "save_last_and_best",
    "seed_everything",
    "seed_rank",
    "seeded_rng",
    "teardown_distributed",
    "train_epoch",
    "unfused_attention",
    "wrap_ddp",
]
