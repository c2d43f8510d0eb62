"""Sentence pairs and the STSb reader: both file layouts, quotes, extra columns, clear errors."""

import gzip

import pytest
import torch
from torch.utils.data import DataLoader

from minisbert import data
from minisbert.data import InputExample, SentencesDataset, collate, load_stsb, read_sts
from fake_model import FakeSentenceTransformer

HEADER = "split\tgenre\tdataset\tyear\tsid\tscore\tsentence1\tsentence2\n"


def write_original(folder, split="train", lines=("main-captions\tMSRvid\t2012test\t0001\t5.000\tA b.\tA c.",)):
    folder.mkdir(exist_ok=True)
    path = folder / f"sts-{split}.csv"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_gz(path, text: str):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


@pytest.mark.real
def test_shared_stsb_files_give_the_published_pair_counts(stsb_dir):
    counts = {split: len(read_sts(stsb_dir, split)) for split in ("train", "dev", "test")}
    assert counts == {"train": 5749, "dev": 1500, "test": 1379}


@pytest.mark.real
def test_shared_stsb_sentences_keep_their_quotes_and_labels_lie_in_0_1(stsb_dir):
    examples = read_sts(stsb_dir, "train")
    assert examples[0].texts == ["A plane is taking off.", "An air plane is taking off."]
    assert examples[0].label == 1.0
    assert all(0.0 <= e.label <= 1.0 for e in examples)
    assert any('"' in e.texts[0] + e.texts[1] for e in examples)
    assert not any("\t" in e.texts[0] + e.texts[1] for e in examples)


def test_original_layout_keeps_unbalanced_quotes_and_ignores_extra_columns(tmp_path):
    write_original(tmp_path, "dev", [
        'main-news\theadlines\t2016\t0012\t4\tHe said "no.\tShe said no"\tSource A\tSource B',
        'main-news\theadlines\t2016\t0013\t2.5\t"Quoted"\tplain',
    ])
    examples = read_sts(tmp_path, "dev")
    assert [e.texts for e in examples] == [['He said "no.', 'She said no"'], ['"Quoted"', "plain"]]
    assert [e.label for e in examples] == [0.8, 0.5]  # score / 5


def test_windows_line_endings_do_not_end_up_in_the_sentences(tmp_path):
    (tmp_path / "sts-test.csv").write_bytes(b"g\tf\ty\t1\t3\tone\ttwo\r\n")
    assert read_sts(tmp_path, "test")[0].texts == ["one", "two"]


def test_gzipped_tsv_is_read_by_header_name_and_filtered_by_split(tmp_path):
    # Columns deliberately out of the usual order: only the header says where the score is.
    text = ("sentence2\tscore\tsplit\tsentence1\tgenre\n"
            'B "1\t5.0\ttrain\tA 1\tmain\n'
            "B 2\t0.0\tdev\tA 2\tmain\n"
            "B 3\t2.0\ttrain\tA 3\tmain\n")
    path = write_gz(tmp_path / "stsbenchmark.tsv.gz", text)
    train = read_sts(path, "train")
    assert [e.texts for e in train] == [["A 1", 'B "1'], ["A 3", "B 3"]]
    assert [e.label for e in train] == [1.0, 0.4]
    assert [e.texts for e in read_sts(path, "dev")] == [["A 2", "B 2"]]


@pytest.mark.parametrize("line, message", [
    ("g\tf\t2012\t0001\t3.0\tonly one sentence", "expected at least 7"),
    ("g\tf\t2012\t0001\tabc\tone\ttwo", "not a number"),
    ("g\tf\t2012\t0001\tnan\tone\ttwo", "outside 0-5"),
    ("g\tf\t2012\t0001\t5.5\tone\ttwo", "outside 0-5"),
    ("g\tf\t2012\t0001\t-0.1\tone\ttwo", "outside 0-5"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    write_original(tmp_path, "train", ["g\tf\t2012\t0000\t1.0\tfine\tfine", line])
    with pytest.raises(ValueError, match=rf"sts-train\.csv, line 2: .*{message}"):
        read_sts(tmp_path, "train")


def test_non_utf8_byte_names_file_and_line(tmp_path):
    (tmp_path / "sts-dev.csv").write_bytes(b"g\tf\ty\t1\t3\tok\tok\ng\tf\ty\t2\t3\tcaf\xe9\tok\n")
    with pytest.raises(ValueError, match=r"sts-dev\.csv, line 2: not valid UTF-8"):
        read_sts(tmp_path, "dev")


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "sts-test.csv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"sts-test\.csv: empty file"):
        read_sts(tmp_path, "test")


def test_gzipped_tsv_errors_name_file_and_line(tmp_path):
    path = write_gz(tmp_path / "sts.tsv.gz", HEADER + "train\tg\td\t2012\t1\tfive\tA\tB\n")
    with pytest.raises(ValueError, match=r"sts\.tsv\.gz, line 2: score 'five' is not a number"):
        read_sts(path, "train")
    short = write_gz(tmp_path / "short.tsv.gz", HEADER + "train\tg\td\n")
    with pytest.raises(ValueError, match=r"short\.tsv\.gz, line 2: expected 8"):
        read_sts(short, "train")
    no_score = write_gz(tmp_path / "bad.tsv.gz", "split\tsentence1\tsentence2\n")
    with pytest.raises(ValueError, match=r"bad\.tsv\.gz, line 1: header lacks .*score"):
        read_sts(no_score, "train")
    with pytest.raises(ValueError, match="empty file"):
        read_sts(write_gz(tmp_path / "empty.tsv.gz", ""), "train")


def test_a_missing_path_or_a_split_file_given_for_the_folder_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such STSb folder or file"):
        read_sts(tmp_path / "nowhere", "train")
    one_split = tmp_path / "sts-train.csv"
    one_split.write_text("main-captions\tMSRvid\t2012\t1\t5.000\tA man.\tA man.\n")
    with pytest.raises(ValueError, match=r"sts-train\.csv, line 1: .*give their folder"):
        read_sts(one_split, "train")


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        read_sts(tmp_path, "validation")


def test_load_stsb_downloads_through_the_cache_when_no_source_is_given(tmp_path, monkeypatch):
    path = write_gz(tmp_path / "stsbenchmark.tsv.gz", HEADER + "test\tg\td\t2012\t1\t2.5\tA\tB\n")
    asked = []
    monkeypatch.setattr(data.hub, "cached_url", lambda url: asked.append(url) or path)
    monkeypatch.delenv("MINISBERT_STSB_URL", raising=False)
    assert load_stsb("test")[0].label == 0.5
    monkeypatch.setenv("MINISBERT_STSB_URL", "http://mirror.invalid/sts.tsv.gz")
    load_stsb("test")
    assert asked == [data.STSB_URL, "http://mirror.invalid/sts.tsv.gz"]
    assert load_stsb("train", source=write_original(tmp_path / "orig").parent)[0].label == 1.0


def test_stsb_offline_without_a_cached_copy_says_how_to_give_a_local_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISBERT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.hub.HubError, match="HF_HUB_OFFLINE.*or read a local STSb: --data"):
        load_stsb("test")


def test_input_example_refuses_texts_given_in_place_of_guid():
    assert InputExample(texts=["a", "b"], label=0.8).guid == ""
    for positional in (["a", "b"], 0.8), (["a", "b"],):
        with pytest.raises(TypeError, match=r"guid must be a str.*texts=\["):
            InputExample(*positional)
    with pytest.raises(TypeError, match="list of strings"):
        InputExample(texts="a b")


def test_collate_tokenizes_each_text_column_and_gives_float32_labels():
    model = FakeSentenceTransformer()
    batch = [InputExample(texts=["a man", "a dog runs"], label=1), InputExample(texts=["x", "y"], label=0.25)]
    features, labels = collate(batch, model)
    assert len(features) == 2
    assert features[0]["input_ids"].shape == (2, 2) and features[1]["input_ids"].shape == (2, 3)
    assert features[1]["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.dtype == torch.float32 and labels.tolist() == [1.0, 0.25]


def test_sentences_dataset_batches_through_collate_in_a_dataloader():
    model = FakeSentenceTransformer()
    examples = [InputExample(texts=[f"s {i}", f"t {i}"], label=i / 10) for i in range(5)]
    dataset = SentencesDataset(examples, model)
    assert len(dataset) == 5 and dataset[3] is examples[3]
    loader = DataLoader(dataset, batch_size=2, collate_fn=lambda b: collate(b, model))
    assert [len(labels) for _, labels in loader] == [2, 2, 1]
    assert torch.cat([labels for _, labels in loader]).tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_collate_refuses_a_batch_with_different_numbers_of_texts():
    batch = [InputExample(texts=["a", "b"]), InputExample(texts=["a"])]
    with pytest.raises(ValueError, match="same number of texts"):
        collate(batch, FakeSentenceTransformer())
