"""What the project promises when things go wrong: broken or hostile files fail with an error that
names the file and leave every file as it was, messy text encodes, and a training run that is
killed continues from its last checkpoint to the very weights of a run that never stopped."""

import json
import os
import random
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from minisbert import InputExample, SentencesDataset, SentenceTransformer, losses, recipe, resume
from minisbert.evaluation import EmbeddingSimilarityEvaluator
from minisbert.models import Pooling
from minisbert.training import fit
from conftest import TINY_VOCAB, write_tiny_model_folder
from fake_model import FakeSentenceTransformer, ScriptedEvaluator

WORDS = TINY_VOCAB[9:22]  # the plain words of the tiny vocabulary


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matrices are too small to share out: one thread is several times faster,
    and far faster still on a machine whose cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_pairs(n: int, seed: int = 0) -> list[InputExample]:
    """Sentences of 1 to 8 words, so that batches have padding (and the encoder packs them)."""
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.sample(WORDS, rng.randint(1, 8)))

    return [InputExample(texts=[sentence(), sentence()], label=rng.random()) for _ in range(n)]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- broken and hostile model folders ----------------------------------------------------------

def edit_json(name, **change):
    def apply(folder):
        d = json.loads((folder / name).read_text())
        d.update(change)
        (folder / name).write_text(json.dumps(d))
    return apply


def write(name, raw: bytes):
    return lambda folder: (folder / name).write_bytes(raw)


def delete(name):
    return lambda folder: (folder / name).unlink()


def truncate(name):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:-100])


def edit_module(position, **change):
    def apply(folder):
        modules = json.loads((folder / "modules.json").read_text())
        modules[position].update(change)
        (folder / "modules.json").write_text(json.dumps(modules))
    return apply


def pooling_through_a_link_that_leaves(folder):
    outside = folder.parent / "elsewhere"
    shutil.copytree(folder / "1_Pooling", outside)
    os.symlink(outside, folder / "2_Link")
    edit_module(1, path="2_Link")(folder)


def vocab_txt_not_utf8(folder):
    (folder / "tokenizer.json").unlink()  # so that vocab.txt is read
    (folder / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n\xff\xfe\n")


def bin_that_is_no_pickle(folder):
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle at all")


BROKEN = {  # name: (what is done to a saved tiny model, the file the error names, words it says)
    "config_zero_heads": (edit_json("config.json", num_attention_heads=0), "config.json",
                          "num_attention_heads"),
    "config_dropout_above_one": (edit_json("config.json", hidden_dropout_prob=1.5), "config.json",
                                 "hidden_dropout_prob"),
    "config_size_as_a_string": (edit_json("config.json", hidden_size="32"), "config.json",
                                "hidden_size"),
    "config_not_utf8": (write("config.json", b"\xff\xfe{}"), "config.json", "utf-8"),
    "config_a_list": (write("config.json", b"[]"), "config.json", "object"),
    "config_missing": (delete("config.json"), "config.json", "No such file"),
    "config_vocab_size_not_the_weights": (edit_json("config.json", vocab_size=10),
                                          "model.safetensors", "embeddings.word.weight"),
    "sbert_max_seq_length_a_string": (edit_json("sentence_bert_config.json", max_seq_length="64"),
                                      "sentence_bert_config.json", "max_seq_length"),
    "sbert_max_seq_length_past_positions": (
        edit_json("sentence_bert_config.json", max_seq_length=100_000),
        "sentence_bert_config.json", "max_position_embeddings"),
    "sbert_do_lower_case_not_a_bool": (edit_json("sentence_bert_config.json", do_lower_case="yes"),
                                       "sentence_bert_config.json", "do_lower_case"),
    "pooling_not_json": (write("1_Pooling/config.json", b"{"), "1_Pooling/config.json", "JSON"),
    "pooling_width_not_the_transformers": (
        edit_json("1_Pooling/config.json", word_embedding_dimension=31), "1_Pooling/config.json",
        "word_embedding_dimension"),
    "pooling_width_a_string": (edit_json("1_Pooling/config.json", word_embedding_dimension="32"),
                               "1_Pooling/config.json", "word_embedding_dimension"),
    "pooling_without_a_mode": (edit_json("1_Pooling/config.json", pooling_mode_mean_tokens=False),
                               "1_Pooling/config.json", "pooling mode"),
    "pooling_config_missing": (delete("1_Pooling/config.json"), "1_Pooling/config.json",
                               "No such file"),
    "modules_not_json": (write("modules.json", b"[{"), "modules.json", "JSON"),
    "modules_not_a_list": (write("modules.json", b'{"0": "Transformer"}'), "modules.json", "list"),
    "modules_empty": (write("modules.json", b"[]"), "modules.json", "non-empty"),
    "modules_idx_a_string": (edit_module(1, idx="1"), "modules.json", "idx"),
    "modules_type_missing": (edit_module(1, type=None), "modules.json", "unknown module type"),
    "module_path_not_a_string": (edit_module(1, path=5), "modules.json", "leaves"),
    "transformer_path_to_a_sibling": (edit_module(0, path="../other-model"), "modules.json",
                                      "leaves"),
    "module_path_through_a_symlink": (pooling_through_a_link_that_leaves, "modules.json", "leaves"),
    "vocab_txt_not_utf8": (vocab_txt_not_utf8, "vocab.txt", "line 3"),
    "tokenizer_json_not_a_tokenizer": (write("tokenizer.json", b"{}"), "tokenizer.json",
                                       "cannot read"),
    "tokenizer_json_truncated": (truncate("tokenizer.json"), "tokenizer.json", "cannot read"),
    "tokenizer_config_not_json": (write("tokenizer_config.json", b"{"), "tokenizer_config.json",
                                  "JSON"),
    "special_tokens_map_a_list": (write("special_tokens_map.json", b"[]"),
                                  "special_tokens_map.json", "object"),
    "pad_token_not_in_the_vocabulary": (edit_json("special_tokens_map.json", pad_token="<nope>"),
                                        "special_tokens_map.json", "<nope>"),
    "safetensors_truncated": (truncate("model.safetensors"), "model.safetensors", "truncated"),
    "safetensors_empty": (write("model.safetensors", b""), "model.safetensors", "too short"),
    "safetensors_missing": (delete("model.safetensors"), "", "neither model.safetensors"),
    "bin_that_is_no_pickle": (bin_that_is_no_pickle, "pytorch_model.bin", "weights_only"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_model_folder_fails_naming_the_file_and_changes_nothing(tiny_model, tmp_path, case):
    change, file, word = BROKEN[case]
    folder = tmp_path / "m"
    tiny_model.save(folder)
    change(folder)
    before = files_of(tmp_path)
    with pytest.raises(ValueError) as err:
        SentenceTransformer(str(folder), device="cpu")
    message = str(err.value)
    assert str(folder / file) in message, message
    assert word.lower() in message.lower(), message
    assert files_of(tmp_path) == before


# --- messy text --------------------------------------------------------------------------------

MESSY = ["", " ", "\t\n\r  \u3000", "\x00\x01\x1b[31m\x7f", "\u200b\u200d\ufeff\u2060",
         "\u202eright to left\u202c", "e\u0301\u0308", "\U0001F600\U0001F44D\U0001F3FD\U0001F1EB",
         "\u4e2d\u6587", "\u0645\u0631\u062d\u0628\u0627", "\ud800 a lone surrogate",
         "\U0010ffff\uffff", "a" * 1000]
LONG = "the dog runs fast. " * 5300  # 100,700 characters, about 26,000 tokens


def test_empty_and_whitespace_strings_give_finite_vectors(tiny_model):
    out = tiny_model.encode(["", " ", "\t\n  "])
    assert out.shape == (3, 32) and np.isfinite(out).all()
    assert np.abs(out).sum(1).min() > 0  # [CLS] [SEP] still make a vector, not zeros


def test_control_characters_and_odd_unicode_encode_to_finite_vectors(tiny_model):
    out = tiny_model.encode(MESSY, normalize_embeddings=True)
    assert out.shape == (len(MESSY), 32) and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_a_lone_surrogate_becomes_the_replacement_character(tiny_model):
    assert tiny_model.tokenize(["a \ud800 dog"])["input_ids"].tolist() == \
        tiny_model.tokenize(["a \ufffd dog"])["input_ids"].tolist()


def test_a_100000_character_string_is_truncated_not_a_crash(tiny_model):
    assert len(LONG) >= 100_000
    assert tiny_model.tokenize([LONG])["input_ids"].shape == (1, 64)
    long, prefix, word = tiny_model.encode([LONG, LONG[:400], "x" * 100_000])
    assert np.isfinite(word).all()
    np.testing.assert_allclose(long, prefix, atol=1e-6)  # both cut at 64 tokens


@pytest.mark.real
def test_real_model_encodes_messy_and_huge_text_to_finite_unit_vectors(real_model):
    out = real_model.encode(MESSY + [LONG])
    assert out.shape == (len(MESSY) + 1, 384) and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert real_model.tokenize([LONG])["input_ids"].shape == (1, 256)
    np.testing.assert_allclose(out[-1], real_model.encode(LONG[:2000]), atol=1e-5)


# --- training that survives --------------------------------------------------------------------

class Killed(Exception):
    """Stands in for the process being killed."""


class StopAt(nn.Module):
    """`loss`, until its call number `stop`, which raises Killed."""

    def __init__(self, loss: nn.Module, stop: int | None = None):
        super().__init__()
        self.loss, self.stop, self.calls = loss, stop, 0

    def forward(self, features, labels):
        self.calls += 1
        if self.calls == self.stop:
            raise Killed(f"call {self.calls}")
        return self.loss(features, labels)


class PythonShuffle(torch.utils.data.Sampler):
    """A sampler that shuffles with Python's `random`, as some of sentence-transformers' do."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        order = list(range(self.n))
        random.shuffle(order)
        return iter(order)

    def __len__(self):
        return self.n


def train_tiny(model_dir, out: Path, stop=None, resume_from=None, seed=0, two_objectives=False,
               evaluator=None, epochs=2, lr=1e-3, warmup_steps=2, python_shuffle=False,
               **options):
    """2 epochs of 3 steps (batch 4) on the tiny BERT, whose dropout draws from torch's RNG, with
    a dev evaluation at each epoch end and checkpoints every 2 steps in out/checkpoints."""
    model = SentenceTransformer(str(model_dir), device="cpu")
    order = {"sampler": PythonShuffle(12)} if python_shuffle else {"shuffle": True}
    loader = DataLoader(SentencesDataset(tiny_pairs(12)), batch_size=4, **order)
    objectives = [(loader, StopAt(losses.CosineSimilarityLoss(model), stop))]
    if two_objectives:  # a second objective of 2 batches
        objectives.append((DataLoader(tiny_pairs(2, seed=1), shuffle=True, batch_size=1),
                           losses.CosineSimilarityLoss(model)))
    evaluator = evaluator or EmbeddingSimilarityEvaluator.from_input_examples(
        tiny_pairs(8, seed=2), name="dev")
    options = {"checkpoint_save_steps": 2, **options}
    rows = fit(model, objectives, evaluator=evaluator, epochs=epochs, warmup_steps=warmup_steps,
               optimizer_params={"lr": lr}, output_path=out / "best",
               checkpoint_path=out / "checkpoints", resume_from_checkpoint=resume_from,
               show_progress_bar=False, seed=seed, **options)
    return model, rows


def test_same_seed_same_data_gives_identical_loss_curves(tiny_model_dir):
    def curve(seed):
        model = SentenceTransformer(str(tiny_model_dir), device="cpu")  # dropout is on in training
        loader = DataLoader(SentencesDataset(tiny_pairs(12)), shuffle=True, batch_size=4)
        rows = fit(model, [(loader, losses.CosineSimilarityLoss(model))], epochs=2, evaluation_steps=1,
                   optimizer_params={"lr": 1e-3}, show_progress_bar=False, seed=seed)
        return [r["loss"] for r in rows]

    first = curve(seed=0)
    assert len(first) == 6 and curve(seed=0) == first
    assert curve(seed=1) != first  # the seed does drive the shuffle and dropout


def assert_same_weights(a: nn.Module, b: nn.Module, tol: float = 1e-6):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert (x - y).abs().max() <= tol, name


@pytest.fixture(scope="module")
def shared_tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_model_folder(tmp_path_factory.mktemp("shared") / "tiny-bert")


@pytest.fixture(scope="module")
def uninterrupted(shared_tiny_dir, tmp_path_factory):
    """The run that is never stopped: its model, rows and best-model folder."""
    out = tmp_path_factory.mktemp("uninterrupted")
    model, rows = train_tiny(shared_tiny_dir, out, checkpoint_save_steps=0)
    return model, rows, files_of(out / "best")


@pytest.mark.parametrize("save_steps, stop", [(2, 3), (2, 5), (3, 5)],
                         ids=["mid_first_epoch", "mid_second_epoch", "at_an_epoch_end"])
def test_a_run_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(
        shared_tiny_dir, uninterrupted, tmp_path, save_steps, stop):
    whole, whole_rows, whole_best = uninterrupted
    with pytest.raises(Killed):
        train_tiny(shared_tiny_dir, tmp_path, stop=stop, checkpoint_save_steps=save_steps)
    for seed_generator in (random.seed, np.random.seed, torch.manual_seed):
        seed_generator(7)  # a new process starts with other RNG states
    resumed, rows = train_tiny(shared_tiny_dir, tmp_path, resume_from=True, seed=None,
                               checkpoint_save_steps=save_steps)
    assert_same_weights(whole, resumed)
    assert rows == whole_rows
    assert files_of(tmp_path / "best") == whole_best  # the best model and metrics.csv


def test_a_sampler_shuffling_with_python_random_resumes_in_the_same_order(tiny_model_dir, tmp_path):
    random.seed(0)
    whole, _ = train_tiny(tiny_model_dir, tmp_path / "a", checkpoint_save_steps=0,
                          python_shuffle=True)
    random.seed(0)
    with pytest.raises(Killed):  # mid first epoch, after the checkpoint of step 2
        train_tiny(tiny_model_dir, tmp_path / "b", stop=3, python_shuffle=True)
    random.seed(7)  # a new process
    resumed, _ = train_tiny(tiny_model_dir, tmp_path / "b", resume_from=True, seed=None,
                            python_shuffle=True)
    assert_same_weights(whole, resumed)


def test_resuming_replays_dataloaders_that_started_over_mid_epoch(tiny_model_dir, tmp_path):
    # One epoch of 6 steps: the first loader (3 batches) starts over at step 4, the second (2
    # batches) at steps 3 and 5, each with a shuffle drawn from the RNG after earlier dropout.
    options = {"two_objectives": True, "epochs": 1, "steps_per_epoch": 6}
    whole, _ = train_tiny(tiny_model_dir, tmp_path / "a", checkpoint_save_steps=0, **options)
    with pytest.raises(Killed):  # after the checkpoint of step 4
        train_tiny(tiny_model_dir, tmp_path / "b", stop=5, **options)
    resumed, _ = train_tiny(tiny_model_dir, tmp_path / "b", resume_from=True, seed=None, **options)
    assert_same_weights(whole, resumed)


def test_a_checkpoint_is_a_loadable_model_and_its_state_loads_with_weights_only(
        tiny_model_dir, tmp_path):
    model, _ = train_tiny(tiny_model_dir, tmp_path, checkpoint_save_steps=6)
    folder = tmp_path / "checkpoints" / "checkpoint-6"
    again = SentenceTransformer(str(folder), device="cpu")
    assert np.array_equal(again.encode(["the dog runs"]), model.encode(["the dog runs"]))
    state = torch.load(folder / resume.STATE_FILE, weights_only=True)
    assert {"modules", "optimizer", "scheduler", "rng", "data", "progress", "step"} <= set(state)
    assert state["step"] == 6 and state["scheduler"]["last_epoch"] == 6


def test_only_the_newest_checkpoints_are_kept(tiny_model_dir, tmp_path):
    train_tiny(tiny_model_dir, tmp_path, checkpoint_save_steps=1, checkpoint_save_total_limit=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == \
        ["checkpoint-5", "checkpoint-6"]  # and no hidden temporary folders


def test_latest_ignores_half_written_and_incomplete_checkpoints(tiny_model_dir, tmp_path):
    with pytest.raises(Killed):
        train_tiny(tiny_model_dir, tmp_path, stop=5)
    folder = tmp_path / "checkpoints"
    (folder / ".checkpoint-6.tmp-x1y2").mkdir()  # what a kill during a save leaves behind
    (folder / "checkpoint-8").mkdir()  # no training_state.pt
    assert resume.find_checkpoint(True, folder) == folder / "checkpoint-4"


def fail_on_call(n: int, real, error=OSError("disk full")):
    """`real`, except that its n-th call writes half a file (when given one) and raises `error`."""
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            if len(args) > 1 and hasattr(args[1], "write"):
                args[1].write(b"half a file")
            raise error
        return real(*args, **kwargs)
    return failing


@pytest.mark.parametrize("where", ["training_state", "model"])
def test_a_failed_checkpoint_save_leaves_the_previous_checkpoint_and_the_best_model(
        tiny_model_dir, tmp_path, monkeypatch, where):
    snapshots = []
    if where == "training_state":  # the second checkpoint's training_state.pt
        monkeypatch.setattr(resume.torch, "save", fail_on_call(2, torch.save))
    else:  # the second checkpoint's model: saves are best (step 2), checkpoint-2, checkpoint-4
        monkeypatch.setattr(Pooling, "save", fail_on_call(3, Pooling.save))
    with pytest.raises(OSError, match="disk full"):
        train_tiny(tiny_model_dir, tmp_path, checkpoint_save_steps=2, evaluation_steps=2,
                   evaluator=ScriptedEvaluator([0.5, 0.4, 0.3]),
                   callback=lambda *a: snapshots.append(files_of(tmp_path)))
    # Evaluated at step 4 (worse than step 2: the best model stays), then checkpoint-4 failed:
    # the best model and checkpoint-2 are as they were, and the failed save left no trace.
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2"]
    after, before = files_of(tmp_path), snapshots[-1]
    assert after.pop("best/metrics.csv").startswith(before.pop("best/metrics.csv"))  # a new row
    assert after == before
    assert resume.find_checkpoint(True, folder) == folder / "checkpoint-2"


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this calls open(marker, "w"): code run from a data file
        return (open, (self.marker, "w"))


def hostile_training_state(folder, case):
    file = folder / resume.STATE_FILE
    if case == "malicious_pickle":
        torch.save({"format": resume.FORMAT, "x": Evil(folder / "pwned")}, file)
    elif case == "truncated":
        file.write_bytes(file.read_bytes()[:1000])
    elif case == "empty":  # a disk that filled up
        file.write_bytes(b"")
    elif case == "not_a_state":
        torch.save({"weights": torch.ones(2)}, file)


@pytest.mark.parametrize("case, message", [
    ("malicious_pickle", "weights_only"), ("truncated", "not a readable training state"),
    ("empty", "not a readable training state"), ("not_a_state", "not a minisbert training state")])
def test_a_hostile_or_broken_training_state_is_refused_naming_the_file(
        tiny_model_dir, tmp_path, case, message):
    train_tiny(tiny_model_dir, tmp_path, checkpoint_save_steps=6)
    folder = tmp_path / "checkpoints" / "checkpoint-6"
    hostile_training_state(folder, case)
    before = files_of(tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        train_tiny(tiny_model_dir, tmp_path, resume_from=folder)
    assert str(folder / resume.STATE_FILE) in str(err.value)
    assert not (folder / "pwned").exists() and files_of(tmp_path) == before


@pytest.mark.parametrize("change, message", [
    ({}, r"total_steps=2.*6"),  # the same settings but without max_steps
    ({"max_steps": 2, "lr": 2e-3}, r"lr=0.001.*0.002"),
    ({"max_steps": 2, "warmup_steps": 0}, r"warmup_steps=2.*0"),
])
def test_resuming_with_other_settings_is_refused_naming_the_setting(tiny_model_dir, tmp_path,
                                                                     change, message):
    train_tiny(tiny_model_dir, tmp_path, checkpoint_save_steps=2, max_steps=2)
    folder = tmp_path / "checkpoints" / "checkpoint-2"
    with pytest.raises(ValueError, match=r"training_state.pt.*" + message):
        train_tiny(tiny_model_dir, tmp_path, resume_from=folder, **change)


def test_resuming_with_another_loss_or_another_model_is_refused(tiny_model_dir, tmp_path):
    train_tiny(tiny_model_dir, tmp_path, checkpoint_save_steps=2, max_steps=2)
    folder = tmp_path / "checkpoints" / "checkpoint-2"
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    loader = DataLoader(SentencesDataset(tiny_pairs(12)), shuffle=True, batch_size=4)
    settings = dict(epochs=2, max_steps=2, warmup_steps=2, optimizer_params={"lr": 1e-3},
                    resume_from_checkpoint=folder, show_progress_bar=False)
    with pytest.raises(ValueError, match=r"losses=\['StopAt'\].*\['CoSENTLoss'\]"):
        fit(model, [(loader, losses.CoSENTLoss(model))], **settings)
    other = FakeSentenceTransformer()  # the same settings, another model
    with pytest.raises(ValueError, match=r"training_state.pt: the weights are another model's"):
        fit(other, [(loader, StopAt(losses.CosineSimilarityLoss(other)))], **settings)


def test_resuming_from_nothing_names_the_folder(tmp_path):
    model = FakeSentenceTransformer()
    objectives = [(DataLoader(tiny_pairs(8), batch_size=4), losses.CosineSimilarityLoss(model))]
    with pytest.raises(FileNotFoundError, match="nowhere.*training_state.pt"):
        fit(model, objectives, resume_from_checkpoint=tmp_path / "nowhere", show_progress_bar=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint-<step> folder"):
        fit(model, objectives, checkpoint_path=tmp_path, resume_from_checkpoint=True,
            show_progress_bar=False)


# --- the scripts' --checkpoint-steps and --resume ----------------------------------------------

def write_tiny_stsb(folder: Path) -> Path:
    folder.mkdir()
    for split, n in (("train", 12), ("dev", 8), ("test", 8)):
        lines = [f"main\tfile\t2012\t{i}\t{5 * ex.label:.2f}\t{ex.texts[0]}\t{ex.texts[1]}"
                 for i, ex in enumerate(tiny_pairs(n, seed=len(split)))]
        (folder / f"sts-{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_scripts_take_resume_and_checkpoint_steps(tmp_path):
    (tmp_path / "run" / "checkpoints" / "checkpoint-9").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "checkpoint-9" / resume.STATE_FILE).write_bytes(b"")
    args = recipe.parser("x", "m").parse_args(["--resume", "latest", "--checkpoint-steps", "50",
                                               "--output", str(tmp_path / "run")])
    assert (args.resume, args.checkpoint_steps) == ("latest", 50)
    assert recipe.output_folder(Namespace(output=None, resume="o/checkpoints/checkpoint-9",
                                          model="m"), "s") == Path("o").resolve()
    with pytest.raises(ValueError, match="--output"):
        recipe.output_folder(Namespace(output=None, resume="latest", model="m"), "s")


@pytest.mark.parametrize("options, message", [
    (["--resume", "latest"], "--resume latest needs --output"),
    (["--resume", "latest", "--output", "{tmp}"], "no checkpoint-<step> folder"),
    (["--resume", "{tmp}/checkpoint-4"], "not a training checkpoint"),
])
def test_a_resume_with_nothing_to_resume_is_a_usage_error_before_any_model_loads(
        tmp_path, capsys, options, message):
    with pytest.raises(SystemExit):
        recipe.parser("x", "m").parse_args([o.format(tmp=tmp_path) for o in options])
    err = capsys.readouterr().err
    assert "argument --resume: " in err and message in err


def test_a_resume_under_torchrun_is_a_usage_error_before_any_model_loads(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets for each of its processes
    with pytest.raises(SystemExit):
        recipe.parser("x", "m").parse_args(["--resume", "latest", "--output", "o"])
    assert "argument --resume: resuming needs one process, not torchrun" in capsys.readouterr().err


def test_the_recipe_resumed_from_latest_ends_as_an_uninterrupted_run(tiny_model_dir, tmp_path,
                                                                     monkeypatch):
    data = write_tiny_stsb(tmp_path / "stsb")

    def run(out, resume=None):
        args = Namespace(model=str(tiny_model_dir), data=str(data), epochs=2, batch_size=4,
                         lr=1e-3, warmup_ratio=0.1, seed=0, max_steps=None, evaluation_steps=0,
                         output=str(out), checkpoint_steps=2, resume=resume)
        model = SentenceTransformer(str(tiny_model_dir), device="cpu")
        return model, recipe.train_on_stsb(model, args, script="test")

    whole, whole_results = run(tmp_path / "a")
    cosine = losses.CosineSimilarityLoss
    monkeypatch.setattr(cosine, "forward", fail_on_call(5, cosine.forward, Killed("step 5")))
    with pytest.raises(Killed):
        run(tmp_path / "b")
    monkeypatch.undo()
    resumed, results = run(tmp_path / "b", resume="latest")
    assert_same_weights(whole, resumed)
    assert results["dev"] == whole_results["dev"] and results["test"] == whole_results["test"]
