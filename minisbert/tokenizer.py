"""Text -> token ids, with the Hugging Face `tokenizers` library doing the string work.

BERT splits text into WordPiece sub-words (BERT section 3, "Input/Output Representations") and
wraps each sentence as [CLS] ... [SEP]. We load `tokenizer.json` when a folder has one, else build
the same WordPiece pipeline from `vocab.txt` and the settings in `tokenizer_config.json`.
A batch comes back padded to its longest sentence, with the (B, T) attention mask every module uses.
Read next: encoder.py (what the ids go through).
"""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

SPECIAL_TOKENS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                 "cls_token": "[CLS]", "mask_token": "[MASK]"}


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


def wordpiece_from_vocab(vocab_file: Path, config: dict) -> HFTokenizer:
    """BERT's tokenizer rebuilt from vocab.txt: normalise, split on spaces and punctuation,
    greedy longest-match WordPiece, then the [CLS] ... [SEP] template."""
    vocab = {}
    for i, line in enumerate(vocab_file.read_text(encoding="utf-8").splitlines()):
        vocab.setdefault(line.rstrip("\n"), i)
    special = {k: config.get(k, v) for k, v in BERT_SPECIALS.items()}
    for name, token in special.items():
        if token not in vocab:
            raise ValueError(f"{vocab_file}: {name} {token!r} is not in the vocabulary")
    tok = HFTokenizer(models.WordPiece(vocab, unk_token=special["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),  # None: strip only when lowercasing
        lowercase=config.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = special["cls_token"], special["sep_token"]
    tok.post_processor = processors.BertProcessing((sep, vocab[sep]), (cls, vocab[cls]))
    tok.decoder = decoders.WordPiece()
    return tok


class Tokenizer:
    """Callable: tok(list of str) -> {"input_ids": (B, T) long, "attention_mask": (B, T) long}."""

    def __init__(self, tokenizer: HFTokenizer, max_seq_length: int, config: dict | None = None):
        self.config = dict(config or {})  # tokenizer_config.json, kept for saving
        self.pad_token = self.config.get("pad_token", "[PAD]")
        self.pad_token_id = tokenizer.token_to_id(self.pad_token)
        if self.pad_token_id is None:
            raise ValueError(f"pad token {self.pad_token!r} is not in the vocabulary")
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length

    @classmethod
    def from_folder(cls, folder, max_seq_length: int) -> "Tokenizer":
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
            tok = wordpiece_from_vocab(folder / "vocab.txt", config)
        else:
            raise FileNotFoundError(f"{folder}: no tokenizer.json or vocab.txt")
        return cls(tok, max_seq_length, config)

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
        encodings = self.tokenizer.encode_batch(texts)
        return {"input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
                "attention_mask": torch.tensor([e.attention_mask for e in encodings],
                                               dtype=torch.long)}

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.encode(text).tokens

    def save(self, folder) -> None:
        """Write tokenizer.json (without our padding/truncation settings), tokenizer_config.json,
        special_tokens_map.json and, for WordPiece models, vocab.txt."""
        folder = Path(folder)
        plain = HFTokenizer.from_str(self.tokenizer.to_str())
        plain.no_padding()
        plain.no_truncation()
        plain.save(str(folder / "tokenizer.json"))
        config = {"tokenizer_class": "BertTokenizer", "model_max_length": self.max_seq_length,
                  **self.config}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        specials = {k: config[k] for k in SPECIAL_TOKENS if isinstance(config.get(k), str)}
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
        if isinstance(plain.model, models.WordPiece):
            vocab = sorted(plain.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
            (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
