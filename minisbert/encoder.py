"""The BERT encoder, written out by hand (BERT, Devlin et al. 2019, section 3), and its relatives.

Token ids -> embeddings (word + position [+ token type]) -> N post-LayerNorm transformer layers,
each multi-head self-attention ("Attention is all you need", eq. 1) then a GELU feed-forward.
RoBERTa, DistilBERT and MPNet are this same network with a few named differences, fields of
BertConfig (config.py): position ids that skip padding, no token types, MPNet's relative position
bias. Parameter names are ours; checkpoint.py maps Hugging Face names onto them.
Read next: models.py (Transformer wraps this with a tokenizer; Pooling turns tokens into one vector).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BertConfig


def absolute_position_ids(attention_mask, pad_token_id):
    """BERT, DistilBERT: 0, 1, ..., T-1 for every sentence. (B, T) -> (B, T)."""
    T = attention_mask.size(1)
    return torch.arange(T, device=attention_mask.device).expand_as(attention_mask)


def offset_position_ids(attention_mask, pad_token_id):
    """RoBERTa, MPNet (fairseq's make_positions): real tokens count up from pad_token_id + 1 and
    padding sits at pad_token_id, so no sentence's positions depend on the padding. (B, T)."""
    real = attention_mask.long()
    return real.cumsum(dim=1) * real + pad_token_id


def sinusoidal_table(P: int, C: int) -> torch.Tensor:
    """The fixed position encoding of "Attention is all you need" (section 3.5): (P, C), column
    pairs (2i, 2i+1) hold sin and cos of pos / 10000^(2i / C)."""
    pos = torch.arange(P, dtype=torch.float64)[:, None]
    j = torch.arange(C)
    angle = pos / 10000 ** (2 * (j // 2) / C)  # (P, C)
    return torch.where(j % 2 == 0, angle.sin(), angle.cos()).float()


# transformers buckets MPNet's offsets with 32 buckets whatever relative_attention_num_buckets
# says (that only sizes the table); every released MPNet has 32.
MPNET_BUCKETS = 32


def relative_position_bucket(relative, num_buckets=MPNET_BUCKETS, max_distance=128):
    """T5's bucketing of key-minus-query offsets, as MPNet uses it: half the buckets for keys
    after the query, half for keys before; within a half, offsets below num_buckets // 4 get one
    bucket each and longer ones share buckets spaced logarithmically up to max_distance."""
    half = num_buckets // 2
    bucket = (relative > 0).long() * half
    n = relative.abs()
    exact = half // 2
    # clamp(min=1) only keeps log() finite for the short offsets, which torch.where discards
    scale = torch.log(n.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (scale * (half - exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(n < exact, n, far)


def reference_attention(q, k, v, mask, bias=None):
    """softmax(Q K^T / sqrt(hs) + bias) V, spelled out. q, k, v: (B, nh, T, hs); mask: (B, 1, 1, T)
    bool, True where a key is a real token; bias: optional (1, nh, T, T) added to the scores
    (MPNet's relative positions). Padded keys get probability exactly 0."""
    hs = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, nh, T, hs)


class RealTokens:
    """Where the real tokens of a padded batch are, so that all but attention runs on them alone.

    Embeddings, linear layers, GELU, LayerNorm and dropout treat each token on its own: they run
    on the (N, C) rows of the N real tokens instead of all B * T positions (in STSb training
    batches of 16, 45% of the positions are real tokens). Only attention mixes tokens, so it
    regroups them into padded sentences (B, T, ...) and the mask keeps the padding out.
    The regrouping copies attention's inputs and output in every layer, which costs more than it
    saves when there is little padding (encode's length-sorted batches): below 10% padding, all
    B * T positions are computed instead ("unpacked": N = B * T, pack and pad are reshapes).
    """

    def __init__(self, attention_mask: torch.Tensor):
        self.B, self.T = attention_mask.shape
        index = attention_mask.flatten().nonzero().squeeze(1)  # (N,) positions in B * T
        self.index = index if len(index) <= 0.9 * self.B * self.T else None  # None: unpacked

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...)"""
        x = x.flatten(0, 1)
        return x if self.index is None else x[self.index]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...); packed, zeros at the padding."""
        if self.index is not None:
            x = x.new_zeros(self.B * self.T, *x.shape[1:]).index_copy(0, self.index, x)
        return x.view(self.B, self.T, *x.shape[1:])


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.nh = config.num_attention_heads
        self.query, self.key, self.value = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        self.out = nn.Linear(C, C)
        self.dropout = config.attention_probs_dropout_prob

    def forward(self, x, mask, tokens: RealTokens):
        """x: (N, C), the tokens `tokens` lists; mask: (B, 1, 1, T) bool, or (B, nh, T, T) float
        to add to the scores (-inf: padding)."""
        N, C = x.shape
        B, T, nh, hs = tokens.B, tokens.T, self.nh, C // self.nh

        def heads(t):
            return tokens.pad(t).view(B, T, nh, hs).transpose(1, 2)  # (N, C) -> (B, nh, T, hs)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        p = self.dropout if self.training else 0.0
        if mask.is_floating_point():
            mask = mask.to(q.dtype)  # a float mask must match q's dtype (fp16 under autocast)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs)
        y = tokens.pack(y.transpose(1, 2).reshape(B, T, C))  # (B, nh, T, hs) -> (N, C)
        return self.out(y)


class FeedForward(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        # BERT's "gelu" is the exact erf form, not the tanh approximation.
        self.act = nn.GELU() if config.hidden_act == "gelu" else nn.ReLU()

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class Layer(nn.Module):
    """One transformer layer, post-LayerNorm as in the original BERT: x = LN(x + sublayer(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        C, eps = config.hidden_size, config.layer_norm_eps
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(C, eps=eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(C, eps=eps)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, mask, tokens: RealTokens):
        x = self.attn_norm(x + self.drop(self.attn(x, mask, tokens)))
        return self.ffn_norm(x + self.drop(self.ffn(x)))


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, C)
        self.token_type = nn.Embedding(config.type_vocab_size, C) if config.type_vocab_size else None
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.hidden_dropout_prob)
        self.position_ids = offset_position_ids if config.offset_positions else absolute_position_ids
        self.pad_token_id = config.pad_token_id

    def forward(self, input_ids, attention_mask, tokens: RealTokens, token_type_ids=None):
        """(B, T) ids -> (N, C), the tokens `tokens` lists."""
        ids = tokens.pack(input_ids)
        positions = tokens.pack(self.position_ids(attention_mask, self.pad_token_id))
        x = self.word(ids) + self.position(positions)
        if self.token_type is not None:
            # without token_type_ids, one sentence at a time: segment A
            types = torch.zeros_like(ids) if token_type_ids is None else tokens.pack(token_type_ids)
            x = x + self.token_type(types)
        return self.drop(self.norm(x))


class BertModel(nn.Module):
    """input_ids (B, T), attention_mask (B, T) with 1 = real token, 0 = padding -> (B, T, C),
    zeros at the padding."""

    def __init__(self, config: BertConfig, add_pooler: bool | None = None):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        nh, buckets = config.num_attention_heads, config.relative_attention_num_buckets
        # MPNet: one learned bias per head and offset bucket, shared by all layers.
        self.relative_bias = nn.Embedding(buckets, nh) if buckets else None
        # BERT's [CLS] pooler (dense + tanh) is kept so checkpoints round-trip; SBERT does not use
        # it. DistilBERT was distilled without one.
        if add_pooler is None:
            add_pooler = config.model_type != "distilbert"
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooler else None
        self.apply(self._init_weights)
        if config.sinusoidal_pos_embds:
            with torch.no_grad():
                self.embeddings.position.weight.copy_(
                    sinusoidal_table(config.max_position_embeddings, config.hidden_size))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def relative_position_bias(self, T: int, device) -> torch.Tensor:
        """MPNet's bias on the attention scores: (1, nh, T, T), by key-minus-query offset."""
        pos = torch.arange(T, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None])  # (T, T)
        return self.relative_bias(buckets).permute(2, 0, 1)[None]  # (T, T, nh) -> (1, nh, T, T)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        # The one mask for all layers: (B, T) -> (B, 1, 1, T), broadcast over heads and queries.
        mask = attention_mask.bool()[:, None, None, :]
        if self.relative_bias is not None:
            # SDPA takes bias and padding as one float mask: the bias, -inf on padded keys.
            bias = self.relative_position_bias(input_ids.size(1), input_ids.device)
            mask = torch.where(mask, bias, float("-inf"))  # (B, nh, T, T)
        tokens = RealTokens(attention_mask)
        x = self.embeddings(input_ids, attention_mask, tokens, token_type_ids)  # (N, C)
        for layer in self.layers:
            x = layer(x, mask, tokens)
        # Zeros at the padding whether or not the batch was packed, so that no output depends on
        # the rest of the batch (not even a row with no real token).
        return tokens.pad(x).masked_fill(~attention_mask.bool()[..., None], 0.0)  # (B, T, C)
