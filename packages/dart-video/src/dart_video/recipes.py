"""Training configurations: one dataclass of every setting, named presets, YAML files, flags.

Precedence: :class:`TrainConfig` defaults < a preset (``--config NAME``) or a YAML file
(``--config FILE.yaml``, keys = field names, dashes or underscores) < command-line flags
(``--field-name VALUE``; every field has one).

The presets follow the VideoMamba release's Something-Something V2 scripts
(``videomamba/video_sm/exp/ssv2/videomamba_{tiny,small}/run_f{8,16}x224.sh`` and the defaults of
its ``run_class_finetuning.py``): AdamW (β 0.9, 0.999), learning rate 4e-4 per 256 clips, cosine
schedule to 1e-6 (per 256 clips) after 5 warm-up epochs from 1e-6, layer-wise decay 0.75, two
clips per video per epoch (``num_sample``), 8 GPUs × 64 videos (128 clips), Mixup 0.8 / CutMix 1.0
with label smoothing 0.1, RandAugment, random erasing (probability 0.25, per-pixel noise, one box
through all frames), bf16 autocast, no horizontal flip. Tiny: 35 epochs, drop path
0.1, weight decay 0.1, ``rand-m5-n2-mstd0.25-inc1``; Small: 30 epochs, drop path 0.35, weight
decay 0.05, ``rand-m7-n4-mstd0.5-inc1``. The release starts from its ImageNet-1K VideoMamba
weights: pass them with ``--init PATH --init-image``. It validates after every epoch on one centre
view per video and tests the final model with 2 temporal clips × 3 spatial crops per video, softmax
scores averaged per video: so do ``dart-video train`` (one view) and ``dart-video eval``
(``--test-clips`` × ``--test-crops``, 2 × 3 in the presets).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from dart_core.training.arguments import SettingsError, mapping_arg, read_settings_file, typed_setting


class ConfigError(ValueError):
    """A bad preset name, YAML file or setting; the message says how to fix it."""


def _opt(default: Any, help: str, kind: type | None = None) -> Any:
    metadata = {"help": help, "kind": kind or type(default)}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    # model
    model: str = _opt("videomamba_tiny_dart_patch16_224", "a videomamba_* timm name")
    num_frames: int = _opt(8, "frames per clip T")
    img_size: int = _opt(224, "frame crop size")
    num_tokens: int | None = _opt(None, "DART token budget (default 196·T/2)", int)
    scorer_weights: str | None = _opt(None, "local weights file of the scorer backbone", str)
    model_kwargs: dict = _opt({}, "extra model arguments, JSON or YAML, e.g. '{depth: 2}'", dict)
    drop_path: float = _opt(0.1, "stochastic depth rate")
    grad_checkpointing: bool = _opt(False, "recompute each block's activations in the backward pass: less memory, "
                                           "about one more forward pass of compute (the release's --use-checkpoint)")
    init: str | None = _opt(None, "initial weights: a VideoMamba-layout video checkpoint, or an image one", str)
    init_image: bool = _opt(False, "--init is an image checkpoint: inflate it")
    # data
    format: str = _opt("ssv2", "ssv2 (official layout) or list ('path label' files)")
    train_list: str | None = _opt(None, "'path label' file for training (--format list)", str)
    val_list: str | None = _opt(None, "'path label' file for validation (--format list)", str)
    num_classes: int | None = _opt(None, "classes (list format; default: largest label + 1)", int)
    batch_size: int = _opt(128, "clips per process per micro-batch")
    eval_batch_size: int | None = _opt(None, "default: --batch-size", int)
    accum_steps: int = _opt(1, "micro-batches per optimizer step")
    num_sample: int = _opt(2, "clips drawn from every video per epoch (repeated sampling)")
    workers: int = _opt(8, "data loader processes")
    cache_videos: bool = _opt(False, "keep decoded videos in memory (small data sets)")
    aa: str = _opt("rand-m7-n4-mstd0.5-inc1", "RandAugment policy, the same ops on every frame ('none': off)")
    min_crop_scale: float = _opt(0.66, "training crop: short side resized to size / U(min_crop_scale, 1)")
    mixup: float = _opt(0.8, "mixup alpha (0: off)")
    cutmix: float = _opt(1.0, "cutmix alpha (0: off); one box for all frames")
    mixup_prob: float = _opt(1.0, "probability of mixup or cutmix per batch")
    mixup_switch_prob: float = _opt(0.5, "probability of cutmix instead of mixup")
    smoothing: float = _opt(0.1, "label smoothing")
    reprob: float = _opt(0.0, "random erasing probability per training clip (one box through all frames; 0: off)")
    remode: str = _opt("pixel", "random erasing fill: pixel (per-pixel noise), rand (a colour) or const (zeros)")
    recount: int = _opt(1, "random erasing: most boxes per clip")
    test_clips: int = _opt(1, "dart-video eval: temporal clips per video (softmax averaged per video)")
    test_crops: int = _opt(1, "dart-video eval: spatial crops per clip along the long side (1: centre)")
    # optimisation
    epochs: int = _opt(35, "training epochs")
    blr: float = _opt(4e-4, "learning rate per 256 clips of global batch")
    lr: float | None = _opt(None, "absolute learning rate (default: --blr scaled)", float)
    min_blr: float = _opt(1e-6, "final cosine learning rate per 256 clips")
    warmup_blr: float = _opt(1e-6, "initial warm-up learning rate per 256 clips")
    warmup_epochs: float = _opt(5.0, "linear warm-up epochs")
    weight_decay: float = _opt(0.05, "AdamW weight decay (not on norms, biases, embeddings)")
    layer_decay: float = _opt(0.75, "layer-wise learning-rate decay (1: off)")
    clip_grad: float | None = _opt(None, "gradient norm clip", float)
    max_steps: int | None = _opt(None, "cap on optimizer steps per epoch (smoke runs)", int)
    # run
    seed: int = _opt(0, "random seed")
    device: str | None = _opt(None, "cpu or cuda (default: cuda when available)", str)
    amp_dtype: str = _opt("bfloat16", "autocast dtype on GPU: bfloat16, float16 or none (CPU: float32)")
    deterministic: bool = _opt(False, "deterministic algorithms (exact resume on CPU)")
    ckpt_interval: int = _opt(1000, "also save last.pth every N optimizer steps")
    log_interval: int = _opt(50, "optimizer steps between train log lines")
    progress: bool = _opt(True, "progress bars (--no-progress: none)")
    threads: int | None = _opt(None, "torch CPU threads (default: torch's choice)", int)

    def scaled(self, world_size: int) -> dict[str, float]:
        """Learning rates (peak, final, warm-up start) for this many processes: ``--lr`` if given,
        else ``--blr`` × global clips per step / 256 (the release's rule; min and warm-up too)."""
        factor = self.batch_size * self.accum_steps * world_size / 256
        return {"lr": self.lr if self.lr is not None else self.blr * factor,
                "min_lr": self.min_blr * factor, "warmup_lr": self.warmup_blr * factor}

    def validate(self, training: bool = False) -> None:
        """Raise :class:`ConfigError` for a bad setting (``training``: also those only training uses)."""
        for name in ("batch_size", "accum_steps", "num_sample", "epochs", "ckpt_interval", "log_interval",
                     "num_frames", "img_size", "recount", "test_clips", "test_crops"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.format not in ("ssv2", "list"):
            raise ConfigError(f"--format must be ssv2 or list, got {self.format!r}")
        if self.amp_dtype not in ("bfloat16", "float16", "none"):
            raise ConfigError(f"--amp-dtype must be bfloat16, float16 or none, got {self.amp_dtype!r}")
        if not 0 < self.min_crop_scale <= 1:
            raise ConfigError(f"--min-crop-scale must be in (0, 1], got {self.min_crop_scale}")
        if not 0 <= self.reprob <= 1:
            raise ConfigError(f"--reprob must be in [0, 1], got {self.reprob}")
        if self.remode not in ("pixel", "rand", "const"):
            raise ConfigError(f"--remode must be pixel, rand or const, got {self.remode!r}")
        if training and (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ConfigError(f"Mixup/CutMix pair the clips of a batch: --batch-size must be even, got {self.batch_size} "
                              "(or pass --mixup 0 --cutmix 0)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _recipe(size: str, frames: int, dart: bool) -> dict[str, Any]:
    tiny = size == "tiny"
    return {
        "model": f"videomamba_{size}{'_dart' if dart else ''}_patch16_224", "num_frames": frames, "img_size": 224,
        "batch_size": 128, "num_sample": 2, "epochs": 35 if tiny else 30, "blr": 4e-4, "warmup_epochs": 5.0,
        "drop_path": 0.1 if tiny else 0.35, "weight_decay": 0.1 if tiny else 0.05, "layer_decay": 0.75,
        "aa": "rand-m5-n2-mstd0.25-inc1" if tiny else "rand-m7-n4-mstd0.5-inc1",
        "mixup": 0.8, "cutmix": 1.0, "smoothing": 0.1, "amp_dtype": "bfloat16",
        "reprob": 0.25, "remode": "pixel", "recount": 1, "test_clips": 2, "test_crops": 3,
    }


PRESETS: dict[str, dict[str, Any]] = {
    f"videomamba_{size}{'_dart' if dart else ''}_ssv2_{frames}f": _recipe(size, frames, dart)
    for size in ("tiny", "small") for frames in (8, 16) for dart in (False, True)
}


def _typed(config: str, key: str, value: Any) -> Any:
    """A YAML value checked against its field's type (see :func:`~dart_core.training.arguments.typed_setting`)."""
    field_ = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
    return typed_setting(config, key, value, field_.metadata["kind"], nullable=field_.default is None)


def preset_values(config: str) -> dict[str, Any]:
    """The settings of a preset name or a YAML file."""
    if config in PRESETS:
        return dict(PRESETS[config])
    if config.endswith((".yaml", ".yml")):
        try:
            values = read_settings_file(config)
            unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
            if unknown:
                raise ConfigError(f"config file {config!r} has unknown keys {unknown}; see --help for the names")
            return {key: _typed(config, key, value) for key, value in values.items()}
        except SettingsError as error:
            raise ConfigError(str(error)) from error
    raise ConfigError(f"unknown config {config!r}: use a preset ({', '.join(sorted(PRESETS))}) or a .yaml file")


def flag_help(text: str, default: Any) -> str:
    """A setting's help text with its default appended, unless the text already says what the
    default is (e.g. ``"DART token budget (default 196·T/2)"`` for a default of None)."""
    return text if "default" in text else f"{text} (default {json.dumps(default)})"


def add_config_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """``--config`` and one flag per :class:`TrainConfig` field, or per field in ``names`` (a
    command's own subset; the others are then not flags of ``parser``). Unset flags stay out of
    the namespace."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(names or ()) - set(fields))
    if unknown:
        raise ValueError(f"add_config_flags: {unknown} are not TrainConfig fields")
    parser.add_argument("--config", help=f"preset name ({', '.join(sorted(PRESETS))}) or a YAML file")
    group = parser.add_argument_group("settings (default < --config < flags)")
    for f in fields.values():
        if names is not None and f.name not in names:
            continue
        flag, kind = "--" + f.name.replace("_", "-"), f.metadata["kind"]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        text = flag_help(f.metadata["help"], default)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(flag, type=mapping_arg if kind is dict else kind, default=argparse.SUPPRESS, help=text)


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None,
                     training: bool = False) -> TrainConfig:
    """Defaults < ``base`` (e.g. a checkpoint's stored config) < ``args.config`` < the flags
    present in ``args``; validated (``training``: for a training run, see :meth:`TrainConfig.validate`)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in (base or {}).items() if k in names}
    if getattr(args, "config", None):
        values.update(preset_values(args.config))
    values.update({k: v for k, v in vars(args).items() if k in names})
    config = TrainConfig(**values)
    config.validate(training)
    return config
