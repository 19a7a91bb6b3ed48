"""tools/pretrain_in1k.py: bad model arguments and bad checkpoint files become one-line errors
(no data needed: the checks run before any image is read)."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import pretrain_in1k  # noqa: E402
from pretrain_config import UsageError, parse_args  # noqa: E402

TINY = ["--data-dir", "unused", "--model", "vit_tiny_patch16_224", "--model-kwargs"]
SHAPE = "img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2"


class Untrusted:
    pass


@pytest.mark.parametrize("extra, message", [
    ("drop_path_rate: 0.2", "cannot set 'drop_path_rate', which --drop-path sets: use --drop-path alone"),
    ("num_classes: 10", "cannot set 'num_classes': it comes from the data"),
])
def test_model_kwargs_the_tool_sets_itself_are_refused(extra, message):
    args = parse_args([*TINY, f"{{{SHAPE}, {extra}}}"])
    with pytest.raises(UsageError, match=message):
        pretrain_in1k.build_model(args, num_classes=3)
    assert pretrain_in1k.build_model(parse_args([*TINY, f"{{{SHAPE}}}"]), num_classes=3).head.out_features == 3


@pytest.mark.parametrize("dart_flags", [[], ["--num-tokens", "12"]])
def test_a_misspelt_model_kwarg_is_named_not_blamed_on_the_dart_flags(dart_flags):
    args = parse_args(["--data-dir", "unused", "--model", "deit_tiny_dart_patch16_448", "--model-kwargs",
                       "{depth: 1, dpeth: 2}", *dart_flags])
    with pytest.raises(UsageError, match="--model-kwargs: 'deit_tiny_dart_patch16_448' takes no argument 'dpeth'"):
        pretrain_in1k.build_model(args, num_classes=3)


def test_dart_kwarg_given_twice_is_refused():
    args = parse_args(["--data-dir", "unused", "--model-kwargs", "{num_tokens: 16}", "--num-tokens", "12"])
    with pytest.raises(UsageError, match="cannot set 'num_tokens', which --num-tokens sets"):
        pretrain_in1k.build_model(args, num_classes=3)


def test_model_kwargs_without_a_space_after_the_colon_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*TINY, "{depth:2}"])
    assert exit_info.value.code == 2
    assert "write '{depth: 2}', a space after each colon" in capsys.readouterr().err


def run_cli(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["pretrain_in1k", *argv])
    with pytest.raises(SystemExit) as exit_info:
        pretrain_in1k.cli()
    err = capsys.readouterr().err.strip()
    # status 1, as for every error after parsing (dart-core and dart-video too); 2 is argparse's
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1, err
    return err


def test_checkpoint_problems_are_one_line_errors(tmp_path, monkeypatch, capsys):
    common = ["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]
    err = run_cli(monkeypatch, capsys, [*common, "--resume", str(tmp_path / "nope.pth")])
    assert err == f"pretrain_in1k: error: checkpoint {str(tmp_path / 'nope.pth')!r} does not exist (check the path)."

    torch.save({"model": {}, "extra": Untrusted()}, tmp_path / "evil.pth")
    err = run_cli(monkeypatch, capsys, [*common, "--eval", "--checkpoint", str(tmp_path / "evil.pth")])
    assert err.startswith(f"pretrain_in1k: error: checkpoint {str(tmp_path / 'evil.pth')!r} holds "
                          f"{__name__}.Untrusted; pretrain_in1k loads checkpoints weights-only")
    assert "Re-save it with plain tensors" in err and "extra_safe_globals" not in err

    (tmp_path / "notes.pth").write_text("not a checkpoint")
    err = run_cli(monkeypatch, capsys, [*common, "--eval", "--checkpoint", str(tmp_path / "notes.pth")])
    assert "is not a readable torch.save file" in err
