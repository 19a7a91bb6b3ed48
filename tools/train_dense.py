"""Train, validate, test or resume a dart_dense detection/segmentation config with mmengine's Runner.

    python tools/train_dense.py CONFIG [--work-dir DIR] [--resume [PATH]] [--load-from CKPT]
                                [--val | --test] [--cfg-options key=value ...]
    torchrun --nproc_per_node=N tools/train_dense.py CONFIG --launcher pytorch

``--resume`` alone resumes from the work dir's latest checkpoint; with a path, from that file.
``--val`` / ``--test`` evaluate ``--load-from`` (or the config's ``load_from``) on the validation /
test set instead of training; that checkpoint must fit the model exactly (a missing, unexpected or
misshapen key is an error listing them, never a silently random layer). ``--load-from`` for training
only initialises: keys that do not fit are skipped and listed in a warning. Without CUDA, torchrun
runs use the gloo backend on the CPU.
"""

from __future__ import annotations

import argparse
import inspect
import os.path as osp
import sys

import torch
from dart_core.console import warnings_as_messages
from dart_core.training import leaving_process_group
from dart_dense.checkpoint import CheckpointFileError
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


class UsageError(Exception):
    """A problem with the command line, the config or the files they name: printed without a traceback."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a Python config, e.g. packages/dart-dense/configs/...py")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", help="resume training: latest checkpoint, or PATH")
    parser.add_argument("--load-from", help="initialise the model from a checkpoint (weights only)")
    evaluate = parser.add_mutually_exclusive_group()
    evaluate.add_argument("--val", action="store_true", help="evaluate on the validation set instead of training")
    evaluate.add_argument("--test", action="store_true", help="evaluate on the test set instead of training")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys, key=value")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    cfg = Config.fromfile(args.config)  # imports custom_imports (dart_dense) and registers its modules
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0]
    )
    if args.load_from:
        cfg.load_from = args.load_from
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def load_strictly(runner: Runner) -> None:
    """Make ``runner`` load its checkpoint strictly (mmengine's default, ``strict=False``, only warns).

    For ``--val`` / ``--test``: a checkpoint missing some of the model's weights would be evaluated
    with those layers randomly initialised.

    Raises (when the runner loads): UsageError naming the file and listing the missing,
    unexpected and misshapen keys.
    """
    load = runner.load_checkpoint

    def load_checkpoint(filename, map_location="cpu", strict=True, revise_keys=None):  # strict is always True
        try:
            return load(filename, map_location, True, revise_keys or [(r"^module.", "")])
        except RuntimeError as error:
            if "do not match exactly" not in str(error):  # mmengine's message for keys that do not fit
                raise
            raise UsageError(
                f"--val/--test: checkpoint {filename} does not fit the config's model, so part of the model "
                f"would be evaluated with random weights.\n{error}Pass a checkpoint trained with this config "
                "(and the same --cfg-options)."
            ) from error

    runner.load_checkpoint = load_checkpoint


def init_cpu_distributed(cfg: Config) -> None:
    """mmengine's pytorch launcher always calls ``torch.cuda.set_device``; without CUDA, join the
    torchrun group over gloo here (the Runner then finds it initialised) and wrap the model in
    DDP without device ids."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    cfg.model_wrapper_cfg = dict(
        type="MMDistributedDataParallel", device_ids=None, **no_forward_buffer_sync(),
        find_unused_parameters=cfg.get("find_unused_parameters", False),
    )


def no_forward_buffer_sync() -> dict[str, bool]:
    """DDP's option not to broadcast rank 0's buffers before each forward (mmengine's default).
    torch 2.13 renamed ``broadcast_buffers`` to ``forward_sync_buffers`` and warns on the old name."""
    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise UsageError(f"config file not found: {args.config}")
    cfg = build_config(args)
    if (args.val or args.test) and not cfg.get("load_from"):
        raise UsageError("--val/--test evaluate a checkpoint: pass --load-from CKPT (or set load_from in the config)")
    if args.launcher == "pytorch" and not torch.cuda.is_available():
        init_cpu_distributed(cfg)
    # Leave the process group and let gloo's worker threads settle before the interpreter shuts
    # down, or a rank can abort at exit (teardown_distributed says why).
    with leaving_process_group():
        return run(cfg, args)


def run(cfg: Config, args: argparse.Namespace) -> dict | None:
    """Build the Runner and train, or evaluate a checkpoint (``--val`` / ``--test``)."""
    try:
        runner = RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
    except TypeError as error:  # mmengine's registry: a config key no module takes (a typo'd option)
        raise UsageError(f"the config does not build: {error}") from error
    if args.val or args.test:
        load_strictly(runner)
    if args.val:
        return runner.val()
    if args.test:
        return runner.test()
    runner.train()
    return None


def cli() -> None:
    """``main`` for the command line: user errors (a missing file, a checkpoint that does not fit or
    would run code, an option no module takes) are one line on stderr and exit status 1."""
    try:
        with warnings_as_messages("train_dense"):
            main()
    except (UsageError, FileNotFoundError, CheckpointFileError) as error:
        print(f"train_dense: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
