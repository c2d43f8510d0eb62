"""Text to token ids: WordPiece, [CLS]/[SEP], truncation, padding, and the two file formats."""

import json

import pytest
from tokenizers import models

from minisbert.tokenizer import Tokenizer, wordpiece_from_vocab
from conftest import TINY_VOCAB

ID = {t: i for i, t in enumerate(TINY_VOCAB)}


@pytest.fixture
def tok(tiny_model_dir):
    return Tokenizer.from_folder(tiny_model_dir, max_seq_length=16)


def test_wordpiece_splits_into_known_pieces_and_wraps_in_cls_sep(tok):
    ids = tok(["The man is playing guitars!"])["input_ids"][0].tolist()
    expected = ["[CLS]", "the", "man", "is", "playing", "guitar", "##s", "!", "[SEP]"]
    assert ids == [ID[t] for t in expected]


def test_unknown_words_become_unk(tok):
    assert tok.tokens("a zebra") == ["[CLS]", "a", "[UNK]", "[SEP]"]


def test_vocab_lines_end_at_newlines_only_as_in_the_tokenizers_library(tmp_path):
    # str.splitlines would also break at U+2028, U+0085, form feed, ...: every later id shifts.
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a\u2028b", "x\x0cy", "dog", "man"]
    path = tmp_path / "vocab.txt"
    path.write_bytes("".join(t + "\r\n" * (i % 2) + "\n" * (1 - i % 2)
                             for i, t in enumerate(tokens)).encode("utf-8"))
    ours = wordpiece_from_vocab(path, {}).get_vocab()
    assert ours == models.WordPiece.read_file(str(path)) == {t: i for i, t in enumerate(tokens)}


def test_lowercasing_follows_tokenizer_config(tiny_model_dir):
    config = {"do_lower_case": False}
    cased = Tokenizer(wordpiece_from_vocab(tiny_model_dir / "vocab.txt", config), 16, config)
    assert cased.tokens("The dog") == ["[CLS]", "[UNK]", "dog", "[SEP]"]


def test_truncation_counts_cls_and_sep(tok):
    ids = tok(["a " * 100])["input_ids"][0].tolist()
    assert len(ids) == 16
    assert ids[0] == ID["[CLS]"] and ids[-1] == ID["[SEP]"] and ids[1:-1] == [ID["a"]] * 14


def test_batch_is_padded_to_its_longest_sentence_with_a_mask(tok):
    batch = tok(["a dog", "the big red car runs"])
    assert batch["input_ids"].shape == (2, 7)
    assert batch["input_ids"][0].tolist() == [2, ID["a"], ID["dog"], 3, 0, 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]


def test_saved_tokenizer_json_gives_the_same_ids(tok, tmp_path):
    tok.save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["truncation"] is None and saved["padding"] is None
    (tmp_path / "vocab.txt").unlink()  # force the tokenizer.json path
    again = Tokenizer.from_folder(tmp_path, max_seq_length=16)
    texts = ["The man is playing guitars!", "a " * 30]
    assert again(texts)["input_ids"].tolist() == tok(texts)["input_ids"].tolist()


def test_saved_vocab_txt_lists_tokens_in_id_order(tok, tmp_path):
    tok.save(tmp_path)
    assert (tmp_path / "vocab.txt").read_text().splitlines() == TINY_VOCAB


def test_tokenizer_json_that_is_not_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path, max_seq_length=16)


def test_missing_tokenizer_files_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        Tokenizer.from_folder(tmp_path, max_seq_length=16)


@pytest.mark.real
@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
def test_token_ids_equal_the_reference_implementation(test_model_dir, reference_json, source):
    if source == "tokenizer.json":
        tok = Tokenizer.from_folder(test_model_dir, reference_json["max_seq_length"])
    else:
        config = json.loads((test_model_dir / "tokenizer_config.json").read_text())
        tok = Tokenizer(wordpiece_from_vocab(test_model_dir / "vocab.txt", config),
                        reference_json["max_seq_length"], config)
    for sentence, expected in zip(reference_json["sentences"], reference_json["input_ids"]):
        assert tok([sentence])["input_ids"][0].tolist() == expected, sentence
