"""SentenceTransformer: parity with the reference implementation, encode's contract, save/load."""

import copy
import io
import json
import logging
import threading

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from minisbert import SentenceTransformer, weights
from minisbert.models import Normalize, Pooling, Transformer
from minisbert.precision import weights_as


@pytest.mark.real
def test_embeddings_match_the_reference_implementation(real_model, reference_json):
    got = real_model.encode(reference_json["sentences"])
    expected = np.array(reference_json["embeddings_normalized"], dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


@pytest.mark.real
def test_mean_pooled_embeddings_match_the_reference_implementation(real_model, reference_json):
    mean_only = SentenceTransformer(modules=[real_model[0], Pooling(384, "mean")], device="cpu")
    got = mean_only.encode(reference_json["sentences"])
    assert np.abs(got - np.array(reference_json["embeddings_mean_pooled"])).max() < 1e-5


@pytest.mark.real
def test_a_sentence_alone_equals_the_same_sentence_in_a_padded_batch(real_model, reference_json):
    short = "A man is playing a guitar."
    long = max(reference_json["sentences"], key=len)
    alone = real_model.encode([short])
    batched = real_model.encode([long, short, long + " " + long], batch_size=3)
    assert np.abs(alone[0] - batched[1]).max() < 1e-5


@pytest.mark.real
def test_stsb_test_spearman_equals_the_reference_figure(real_model, stsb_dir):
    rows = [line.rstrip("\n").split("\t") for line in
            (stsb_dir / "sts-test.csv").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1379
    u = real_model.encode([r[5] for r in rows], batch_size=64)
    v = real_model.encode([r[6] for r in rows], batch_size=64)
    spearman = spearmanr((u * v).sum(1), [float(r[4]) for r in rows]).statistic
    assert abs(spearman - 0.8203) <= 0.0005


@pytest.mark.real
def test_saved_real_model_reloads_to_the_same_embeddings(real_model, reference_json, tmp_path):
    real_model.save(tmp_path / "copy")
    again = SentenceTransformer(str(tmp_path / "copy"), device="cpu")
    a, b = real_model.encode(reference_json["sentences"]), again.encode(reference_json["sentences"])
    assert np.abs(a - b).max() < 1e-6


def test_saved_folder_has_the_sentence_transformers_layout(tiny_model, tmp_path):
    tiny = SentenceTransformer(modules=[*tiny_model, Normalize()], device="cpu")
    tiny.save(tmp_path / "m")
    names = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*")}
    assert {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
            "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.txt", "1_Pooling", "1_Pooling/config.json",
            "2_Normalize"} <= names
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert [(m["idx"], m["name"], m["path"], m["type"]) for m in modules] == [
        (0, "0", "", "sentence_transformers.models.Transformer"),
        (1, "1", "1_Pooling", "sentence_transformers.models.Pooling"),
        (2, "2", "2_Normalize", "sentence_transformers.models.Normalize")]
    sbert = json.loads((tmp_path / "m" / "sentence_bert_config.json").read_text())
    assert sbert == {"max_seq_length": 64, "do_lower_case": False}
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 32


def test_tiny_model_saved_and_reloaded_gives_identical_embeddings(tiny_model, tmp_path):
    texts = ["a man is playing guitar", "the dog runs", "big red car"]
    tiny_model.save(tmp_path / "m")
    again = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert np.array_equal(tiny_model.encode(texts), again.encode(texts))


def test_plain_hugging_face_folder_gets_mean_pooling_and_says_so(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO):
        model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert [type(m) for m in model] == [Transformer, Pooling]
    assert model[1].pooling_mode == "mean"
    assert "mean pooling" in caplog.text


def test_encode_returns_one_vector_for_a_str_and_a_matrix_for_a_list(tiny_model):
    assert tiny_model.encode("the dog").shape == (32,)
    out = tiny_model.encode(["the dog", "a cat"])
    assert out.shape == (2, 32) and out.dtype == np.float32
    assert tiny_model.encode([]).shape == (0, 32)


def test_encode_restores_the_input_order_after_sorting_by_length(tiny_model):
    texts = ["a", "the big red car runs fast", "dog", "the man is playing piano music"]
    together = tiny_model.encode(texts, batch_size=2)
    one_by_one = np.stack([tiny_model.encode(t) for t in texts])
    assert np.abs(together - one_by_one).max() < 1e-6


def test_encode_restores_training_mode_and_tracks_no_gradients(tiny_model):
    tiny_model.train()
    out = tiny_model.encode(["the dog"], convert_to_tensor=True)
    assert tiny_model.training and not out.requires_grad
    tiny_model.eval()
    tiny_model.encode(["the dog"])
    assert not tiny_model.training


def test_encode_can_normalize_and_return_tensors(tiny_model):
    out = tiny_model.encode(["the dog", "a cat"], normalize_embeddings=True, convert_to_tensor=True)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_encode_names_the_position_of_a_non_string(tiny_model):
    with pytest.raises(TypeError, match="sentence 1 is NoneType"):
        tiny_model.encode(["fine", None])


@pytest.mark.parametrize("bad", [None, 3, b"bytes"])
def test_encode_refuses_what_is_neither_a_str_nor_a_list_of_str(tiny_model, bad):
    with pytest.raises(TypeError, match="sentences must be a str or a list of str"):
        tiny_model.encode(bad)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_encode_refuses_a_batch_size_that_is_not_a_positive_int(tiny_model, batch_size):
    with pytest.raises(ValueError, match=f"batch_size={batch_size!r}"):
        tiny_model.encode(["the dog", "a cat"], batch_size=batch_size)


def test_encode_takes_numpy_ints_and_arrays_as_plain_python_ones(tiny_model):
    texts = ["the dog", "a cat runs"]
    expected = tiny_model.encode(texts, batch_size=1)
    assert np.array_equal(tiny_model.encode(np.array(texts), batch_size=np.int64(1)), expected)


def test_one_str_without_numpy_conversion_is_one_tensor(tiny_model):
    out = tiny_model.encode("the dog", convert_to_numpy=False)
    assert isinstance(out, torch.Tensor) and out.shape == (32,)
    listed = tiny_model.encode(["the dog", "a cat"], convert_to_numpy=False)
    assert [v.shape for v in listed] == [(32,), (32,)]
    torch.testing.assert_close(listed[0], out)


def test_a_loaded_model_is_in_eval_mode_so_a_direct_forward_has_no_dropout(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert model[0].encoder.config.hidden_dropout_prob > 0  # dropout would show if it ran
    features = model.tokenize(["the dog is running"])
    assert not model.training
    torch.testing.assert_close(model(**features), model(**features), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, on importing compile
@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_copy_encodes_the_same_and_has_its_own_lock(tiny_model, how):
    if how == "deepcopy":
        twin = copy.deepcopy(tiny_model)
    else:  # of a compiled model: torch drops the compiled forward, we drop the lock
        compiled = copy.deepcopy(tiny_model)
        compiled.compile()
        buffer = io.BytesIO()
        torch.save(compiled, buffer)
        twin = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert twin._lock is not tiny_model._lock
    assert np.array_equal(twin.encode(["the dog"]), tiny_model.encode(["the dog"]))


def test_a_deep_copy_taken_while_another_thread_encodes_in_bf16_is_fp32(tiny_model):
    texts = [f"the dog number {i} runs" + " fast" * (i % 7) for i in range(24)]
    stop, copies = threading.Event(), []

    def encode_until_stopped():
        while not stop.is_set():
            tiny_model.encode(texts, batch_size=2, precision="bf16")
    encoder = threading.Thread(target=encode_until_stopped)
    encoder.start()
    try:
        for _ in range(10):
            copies.append(copy.deepcopy(tiny_model))
    finally:
        stop.set()
        encoder.join()
    assert all({p.dtype for p in twin.parameters()} == {torch.float32} for twin in copies)


def test_modules_may_come_as_any_iterable(tiny_model):
    model = SentenceTransformer(modules=iter([tiny_model[0], tiny_model[1]]), device="cpu")
    assert len(model) == 2 and model.encode("the dog").shape == (32,)


def test_save_and_copies_wait_for_a_running_bf16_encode(tiny_model, tmp_path):
    # While an encode runs in bf16 the module holds bf16 copies of its weights; a save or copy
    # from another thread must wait and see the fp32 originals.
    started, release = threading.Event(), threading.Event()

    def hold():
        with tiny_model.inference(), weights_as(tiny_model, torch.bfloat16):
            started.set()
            release.wait(5)
    holder = threading.Thread(target=hold)
    holder.start()
    started.wait(5)
    saver = threading.Thread(target=lambda: (tiny_model.save(tmp_path / "m"),
                                             copies.append(copy.deepcopy(tiny_model))))
    copies = []
    saver.start()
    saver.join(0.3)
    assert saver.is_alive()  # waiting for the encode
    release.set()
    holder.join()
    saver.join()
    saved = weights.read_safetensors(tmp_path / "m" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert {p.dtype for p in copies[0].parameters()} == {torch.float32}


def test_encode_from_several_threads_gives_each_its_own_answer(tiny_model):
    # bf16 encode swaps in a bf16 copy of the weights for its forward pass; another thread must
    # never see that copy, nor the eval mode encode sets, and the weights must end as they began.
    texts = [f"the dog number {i} runs" + " fast" * (i % 7) for i in range(24)]
    tiny_model.train()
    expected = {p: tiny_model.encode(texts, batch_size=3, precision=p) for p in ("fp32", "bf16")}
    got, errors = [], []

    def work(precision):
        try:
            for _ in range(15):
                got.append((precision, tiny_model.encode(texts, batch_size=3, precision=precision)))
        except Exception as e:  # noqa: BLE001  (reported below, with the thread's precision)
            errors.append(f"{precision}: {e!r}")
    threads = [threading.Thread(target=work, args=(p,)) for p in ("bf16", "fp32", "bf16", "fp32")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(np.array_equal(out, expected[p]) for p, out in got) and len(got) == 60
    assert {p.dtype for p in tiny_model.parameters()} == {torch.float32} and tiny_model.training


def test_modules_json_with_an_unknown_type_is_refused(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    modules[1]["type"] = "sentence_transformers.models.Dense"
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="unknown module type.*Dense"):
        SentenceTransformer(str(tmp_path / "m"))


@pytest.mark.parametrize("bad_path", ["../outside", "/etc"])
def test_modules_json_paths_may_not_leave_the_model_folder(tiny_model, tmp_path, bad_path):
    tiny_model.save(tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    modules[1]["path"] = bad_path
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="leaves the model folder"):
        SentenceTransformer(str(tmp_path / "m"))


def test_a_modules_json_entry_without_a_path_is_refused_by_index(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    del modules[1]["path"]
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"modules\.json: module 1 has no 'path'"):
        SentenceTransformer(str(tmp_path / "m"))


def test_modules_json_listing_modules_out_of_order_is_refused_naming_it(tiny_model, tmp_path):
    SentenceTransformer(modules=[tiny_model[0], tiny_model[1], Normalize()]).save(tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    modules[1]["idx"], modules[2]["idx"] = 2, 1  # Normalize before Pooling
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"m/modules\.json: .*\['Transformer', 'Normalize', 'Pooling'\]"):
        SentenceTransformer(str(tmp_path / "m"))


def test_modules_out_of_order_are_refused_when_built_not_when_encoding(tiny_model):
    transformer, pooling = tiny_model[0], tiny_model[1]
    with pytest.raises(ValueError, match="then optional Normalize modules"):
        SentenceTransformer(modules=[transformer, pooling, Normalize(), transformer])
    with pytest.raises(ValueError, match="pooling is 16 wide but the transformer's vectors are 32"):
        SentenceTransformer(modules=[transformer, Pooling(16)])


def test_module_type_strings_of_other_versions_load(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    modules[1]["type"] = "sentence_transformers.models.pooling.Pooling"
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    assert isinstance(SentenceTransformer(str(tmp_path / "m"))[1], Pooling)


def test_a_failed_save_leaves_the_previous_model_intact(tiny_model, tmp_path, monkeypatch):
    tiny_model.save(tmp_path / "m")
    (tmp_path / "m" / "metrics.csv").write_text("step,loss\n")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()}

    def broken_save(self, folder):
        raise OSError("disk full")

    monkeypatch.setattr(Pooling, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tiny_model.save(tmp_path / "m")
    after = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders


def test_saving_onto_a_file_is_refused_and_leaves_the_file(tiny_model, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(NotADirectoryError, match="notes.txt"):
        tiny_model.save(tmp_path / "out" / "notes.txt")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_save_pretrained_is_save(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    again = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert np.array_equal(again.encode(["the dog"]), tiny_model.encode(["the dog"]))


def test_a_saved_folder_gets_the_usual_permissions_not_a_temporary_folders(tiny_model, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()  # made with the process's umask, as any ordinary folder
    tiny_model.save(tmp_path / "m")
    assert (tmp_path / "m").stat().st_mode & 0o777 == probe.stat().st_mode & 0o777


def test_saving_over_a_model_keeps_files_that_are_not_part_of_it(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    (tmp_path / "m" / "metrics.csv").write_text("step,loss\n")
    tiny_model.save(tmp_path / "m")
    assert (tmp_path / "m" / "metrics.csv").read_text() == "step,loss\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_folder_in_the_sentence_transformers_6_layout_loads(tiny_model, tmp_path):
    # What sentence-transformers 6.3 writes: new import paths, the pooling mode by name, and a
    # sentence_bert_config.json without max_seq_length (the tokenizer config carries it).
    texts = ["a man is playing guitar", "the dog"]
    tiny_model.save(tmp_path / "m")
    m = tmp_path / "m"
    modules = json.loads((m / "modules.json").read_text())
    modules[0]["type"] = "sentence_transformers.base.modules.transformer.Transformer"
    modules[1]["type"] = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
    (m / "modules.json").write_text(json.dumps(modules))
    (m / "1_Pooling" / "config.json").write_text(json.dumps(
        {"embedding_dimension": 32, "pooling_mode": "mean", "include_prompt": True}))
    (m / "sentence_bert_config.json").write_text(json.dumps(
        {"transformer_task": "feature-extraction", "module_output_name": "token_embeddings"}))
    again = SentenceTransformer(str(m), device="cpu")
    assert again.max_seq_length == 64
    assert np.array_equal(again.encode(texts), tiny_model.encode(texts))
