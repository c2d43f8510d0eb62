"""Text -> token ids, with the Hugging Face `tokenizers` library doing the string work.

BERT splits text into WordPiece sub-words (BERT section 3, "Input/Output Representations") and
wraps each sentence as [CLS] ... [SEP]; DistilBERT does the same and MPNet too, with <s> ... </s>.
RoBERTa uses byte-level BPE (GPT-2's, so no text is ever unknown) and <s> ... </s>. We load
`tokenizer.json` when a folder has one, else rebuild the family's pipeline from its vocabulary
files (`vocab.txt`, or `vocab.json` + `merges.txt`) and the settings in `tokenizer_config.json`.
A batch comes back padded to its longest sentence, with the (B, T) attention mask every module uses.
Read next: encoder.py (what the ids go through).
"""

import json
from pathlib import Path

import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

SPECIAL_TOKENS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token",
                  "eos_token")
BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                 "cls_token": "[CLS]", "mask_token": "[MASK]"}
FAIRSEQ_SPECIALS = {"unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>",
                    "cls_token": "<s>", "mask_token": "<mask>", "bos_token": "<s>",
                    "eos_token": "</s>"}
# Per model_type: the special tokens when the config files do not name them, and the class
# transformers builds (tokenizer_config.json's tokenizer_class).
FAMILY_SPECIALS = {"bert": BERT_SPECIALS, "distilbert": BERT_SPECIALS, "roberta": FAIRSEQ_SPECIALS,
                   "mpnet": {**FAIRSEQ_SPECIALS, "unk_token": "[UNK]"}}
TOKENIZER_CLASSES = {"bert": "BertTokenizer", "distilbert": "DistilBertTokenizer",
                     "roberta": "RobertaTokenizer", "mpnet": "MPNetTokenizer"}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _specials(vocab_file: Path, vocab: dict, config: dict, model_type: str) -> dict:
    """The family's special tokens, as the config files override them; each must be in vocab."""
    special = {k: config.get(k, v) for k, v in FAMILY_SPECIALS[model_type].items()}
    for name, token in special.items():
        if token not in vocab:
            raise ValueError(f"{vocab_file}: {name} {token!r} is not in the vocabulary")
    return special


def _add_template(tok: HFTokenizer, special: dict, vocab: dict, fairseq: bool,
                  add_prefix_space: bool = False, trim_offsets: bool = True) -> None:
    """[CLS] A [SEP] (BERT) or <s> A </s> (RoBERTa, MPNet); the specials are matched whole in the
    text, and a mask token eats the space before it in the fairseq families."""
    cls, sep = special["cls_token"], special["sep_token"]
    if fairseq:  # the two options only shape the character offsets, not the ids
        tok.post_processor = processors.RobertaProcessing(
            (sep, vocab[sep]), (cls, vocab[cls]), trim_offsets, add_prefix_space)
    else:
        tok.post_processor = processors.BertProcessing((sep, vocab[sep]), (cls, vocab[cls]))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False,
                                       lstrip=fairseq and name == "mask_token")
                            for name, t in special.items()])


def wordpiece_from_vocab(vocab_file: Path, config: dict, model_type: str = "bert") -> HFTokenizer:
    """BERT's tokenizer rebuilt from vocab.txt: normalise, split on spaces and punctuation,
    greedy longest-match WordPiece, then the family's template."""
    # A token listed twice keeps its last line's id, as in transformers and `tokenizers`. Lines
    # end at "\n" (or "\r\n") only: splitlines() would also break at U+2028, form feeds, ...
    raw = vocab_file.read_bytes()
    try:
        lines = [line.removesuffix("\r") for line in raw.decode("utf-8").split("\n")]
        if lines[-1] == "":  # the newline that ends the last line
            lines.pop()
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{vocab_file}, line {line}: not valid UTF-8 ({e.reason})") from None
    vocab = {token: i for i, token in enumerate(lines)}
    special = _specials(vocab_file, vocab, config, model_type)
    tok = HFTokenizer(models.WordPiece(vocab, unk_token=special["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),  # None: strip only when lowercasing
        lowercase=config.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    _add_template(tok, special, vocab, fairseq=model_type == "mpnet")
    return tok


def bpe_from_files(vocab_file: Path, merges_file: Path, config: dict,
                   model_type: str = "roberta") -> HFTokenizer:
    """RoBERTa's tokenizer rebuilt from vocab.json + merges.txt: text as bytes mapped to printable
    characters (a space becomes Ġ), the merges applied in rank order, then <s> ... </s>."""
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        model = models.BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as e:  # json or the Rust side (a bare Exception)
        raise ValueError(f"{vocab_file}, {merges_file.name}: cannot read BPE files: {e}") from e
    special = _specials(vocab_file, vocab, config, model_type)
    prefix_space = config.get("add_prefix_space", False)  # RoBERTa: "Hello" != " Hello"
    tok = HFTokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.decoder = decoders.ByteLevel()
    _add_template(tok, special, vocab, fairseq=True, add_prefix_space=prefix_space,
                  trim_offsets=config.get("trim_offsets", True))
    return tok


class Tokenizer:
    """Callable: tok(list of str) -> {"input_ids": (B, T) long, "attention_mask": (B, T) long}."""

    def __init__(self, tokenizer: HFTokenizer, max_seq_length: int, config: dict | None = None,
                 model_type: str = "bert"):
        self.config = dict(config or {})  # tokenizer_config.json, kept for saving
        self.model_type = model_type
        self.pad_token = self.config.get("pad_token", FAMILY_SPECIALS[model_type]["pad_token"])
        self.pad_token_id = tokenizer.token_to_id(self.pad_token)
        if self.pad_token_id is None:
            raise ValueError(f"pad token {self.pad_token!r} is not in the vocabulary")
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length

    @classmethod
    def from_folder(cls, folder, max_seq_length: int, model_type: str = "bert") -> "Tokenizer":
        """model_type (config.json's) picks the special tokens and template when the folder has
        only vocabulary files."""
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        config.update(_read_json(folder / "special_tokens_map.json"))
        for name in SPECIAL_TOKENS:  # newer files store {"content": "[PAD]", ...} objects
            if isinstance(config.get(name), dict):
                config[name] = config[name].get("content")
        if (folder / "tokenizer.json").is_file():
            try:
                tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # the Rust side raises a bare Exception
                raise ValueError(f"{folder / 'tokenizer.json'}: cannot read tokenizer: {e}") from e
        elif (folder / "vocab.txt").is_file():
            tok = wordpiece_from_vocab(folder / "vocab.txt", config, model_type)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tok = bpe_from_files(folder / "vocab.json", folder / "merges.txt", config, model_type)
        else:
            raise FileNotFoundError(f"{folder}: no tokenizer.json or vocab.txt (WordPiece), "
                                    "nor vocab.json + merges.txt (BPE)")
        try:
            return cls(tok, max_seq_length, config, model_type)
        except ValueError as e:  # a pad token the config files name but the vocabulary lacks
            files = [str(folder / name) for name in ("tokenizer_config.json",
                                                     "special_tokens_map.json")
                     if (folder / name).is_file()]
            raise ValueError(f"{', '.join(files) or folder}: {e}") from None

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, n: int) -> None:
        # The length counts [CLS] and [SEP]: `tokenizers` reserves room for the template's tokens.
        self._max_seq_length = n
        self.tokenizer.enable_truncation(max_length=n)
        self.tokenizer.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        try:
            encodings = self.tokenizer.encode_batch(texts)
        except TypeError:  # a lone surrogate ("\ud800", as errors="surrogateescape" makes of a
            # stray byte) has no UTF-8 form, which `tokenizers` needs: it becomes U+FFFD, as in
            # any UTF-8 decoder, and a valid surrogate pair becomes its character
            encodings = self.tokenizer.encode_batch(
                [t.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for t in texts])
        return {"input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
                "attention_mask": torch.tensor([e.attention_mask for e in encodings],
                                               dtype=torch.long)}

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.encode(text).tokens

    def save(self, folder) -> None:
        """Write tokenizer.json (without our padding/truncation settings), tokenizer_config.json,
        special_tokens_map.json and the family's vocabulary files: vocab.txt for WordPiece,
        vocab.json + merges.txt for BPE."""
        folder = Path(folder)
        plain = HFTokenizer.from_str(self.tokenizer.to_str())
        plain.no_padding()
        plain.no_truncation()
        plain.save(str(folder / "tokenizer.json"))
        config = {"tokenizer_class": TOKENIZER_CLASSES[self.model_type],
                  "model_max_length": self.max_seq_length, **self.config}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        specials = {k: config[k] for k in SPECIAL_TOKENS if isinstance(config.get(k), str)}
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
        if isinstance(plain.model, models.WordPiece):
            vocab = sorted(plain.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
            (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
        elif isinstance(plain.model, models.BPE):
            plain.model.save(str(folder))  # vocab.json and merges.txt
