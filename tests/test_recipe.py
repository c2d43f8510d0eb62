"""The STSb recipe's options: --loss picks the objective, --plot draws the curves after training."""

import json
import math
import sys

import pytest

from minisbert import losses, recipe
from minisbert.recipe import parser, train_on_stsb

# Tiny STSb splits in the authors' layout (genre, file, year, id, score, sentence1, sentence2),
# in the tiny model's vocabulary.
ROWS = [(4.8, "a man is playing guitar.", "a man is playing music."),
        (0.4, "a dog runs fast.", "the woman eats food."),
        (3.6, "a cat eats food.", "the cat eats."),
        (1.0, "a red car is fast.", "the man is playing piano."),
        (2.5, "the woman is playing piano.", "a woman plays music."),
        (0.2, "a big dog.", "a blue car.")]


def write_stsb(folder):
    folder.mkdir()
    for split in ("train", "dev", "test"):
        lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score}\t{a}\t{b}\n"
                 for i, (score, a, b) in enumerate(ROWS)]
        (folder / f"sts-{split}.csv").write_text("".join(lines), encoding="utf-8")
    return folder


def parse_tiny_run(tmp_path, *options: str):
    """The scripts' own parser, so options added later get their defaults: 2 steps of batch 3."""
    return parser("t", "tiny").parse_args(["--data", str(write_stsb(tmp_path / "stsb")), "--batch-size", "3",
                                           "--max-steps", "2", "--output", str(tmp_path / "run"), *options])


@pytest.mark.parametrize("option, value", [("--max-steps", "0"), ("--epochs", "0"),
                                           ("--batch-size", "-1"), ("--checkpoint-steps", "-2")])
def test_counts_out_of_range_are_usage_errors_naming_the_option(option, value, capsys):
    with pytest.raises(SystemExit):
        parser("t", "m").parse_args([option, value])
    assert f"argument {option}: must be at least" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "1.5", "nan"])
def test_a_warmup_ratio_outside_zero_to_one_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit):
        parser("t", "m").parse_args(["--warmup-ratio", value])
    assert "argument --warmup-ratio: must be between 0 and 1" in capsys.readouterr().err


def test_loss_option_names_the_three_pair_losses_and_defaults_to_the_papers():
    p = parser("t", default_model="m")
    assert p.parse_args([]).loss == "cosine" and p.parse_args([]).plot is False
    assert recipe.LOSSES == {"cosine": losses.CosineSimilarityLoss, "cosent": losses.CoSENTLoss,
                             "angle": losses.AnglELoss}
    assert p.parse_args(["--loss", "angle", "--plot"]).loss == "angle"
    with pytest.raises(SystemExit):
        p.parse_args(["--loss", "mse"])


@pytest.mark.parametrize("loss", ["cosent", "angle"])
def test_recipe_trains_with_the_chosen_loss_and_records_it(tiny_model, tmp_path, monkeypatch, loss):
    used = []
    chosen = recipe.LOSSES[loss]
    monkeypatch.setitem(recipe.LOSSES, loss, lambda model: used.append(chosen) or chosen(model))
    args = parse_tiny_run(tmp_path, "--loss", loss)
    results = train_on_stsb(tiny_model, args, script="test")
    assert used == [chosen]
    assert results["loss"] == loss == json.loads((tmp_path / "run" / "results.json").read_text())["loss"]
    # 2 steps of --max-steps out of the ceil(rows / 3) batches of one pass over train:
    assert (results["steps"], results["epochs"]) == (2, round(2 / math.ceil(len(ROWS) / 3), 4))
    assert not (tmp_path / "run" / "curves.png").exists()  # only with --plot


def test_plot_draws_the_curves_after_training(tiny_model, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (pip install -e '.[plot]')")
    args = parse_tiny_run(tmp_path, "--plot")
    train_on_stsb(tiny_model, args, script="test")
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert f"curves: {tmp_path / 'run' / 'curves.png'}" in capsys.readouterr().out


def test_plot_without_matplotlib_fails_before_training(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    args = parser("t", "tiny").parse_args(["--data", str(tmp_path / "missing"), "--plot"])
    with pytest.raises(ImportError, match="matplotlib"):  # not the missing data: nothing ran yet
        train_on_stsb(tiny_model, args, script="test")


def test_precision_option_trains_under_bf16_autocast_and_encodes_in_bf16(tiny_model, tmp_path,
                                                                          monkeypatch):
    from minisbert import training
    seen = []
    real = training.mixed_precision
    monkeypatch.setattr(training, "mixed_precision",
                        lambda device, enabled: seen.append(enabled) or real(device, enabled))
    results = train_on_stsb(tiny_model, parse_tiny_run(tmp_path, "--precision", "bf16"), "test")
    assert seen == [True] and tiny_model.precision == "bf16"
    assert results["precision"] == "bf16"
    assert parser("t", "m").parse_args([]).precision == "fp32"
