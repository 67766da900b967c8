"""Small reference models that train in seconds on a CPU (usable as ``python:saliencydb.data.zoo:small_cnn``)."""

from __future__ import annotations

import json

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (16, 32, 64 channels; the last two stride 2), global average pool, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes) for inputs of shape (N, in_channels, H, W), e.g. 28×28 digits."""
        return self.classifier(self.features(x))


def small_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A fresh, randomly initialised ``SmallCNN``."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels)


class SmallViT(nn.Module):
    """A two-block vision transformer for 28×28 digits: 7×7 patches (16 tokens) and a class token of
    width 32, pre-norm blocks of 2-head ``nn.MultiheadAttention`` and a 64-wide MLP, a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch: int = 7,
                 width: int = 32, depth: int = 2, heads: int = 2, mlp: int = 64) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, width, patch, stride=patch)
        tokens = (image_size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, width) * 0.02)
        self.blocks = nn.ModuleList(_Block(width, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, tokens, width)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        for block in self.blocks:
            t = block(t)
        return self.head(self.norm(t[:, 0]))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.mlp(self.norm2(t))


def small_vit(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A fresh, randomly initialised ``SmallViT`` (usable as ``python:saliencydb.data.zoo:small_vit``)."""
    return SmallViT(num_classes=num_classes, in_channels=in_channels)


TEXT_ARCHS = ("bert", "roberta", "distilbert")
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _tokenizer(arch: str, words: list[str]):
    """A tokenizer over a small vocabulary, built offline: WordPiece (BERT, DistilBERT) with the words, their
    ``##`` continuations and characters; byte-level BPE (RoBERTa) trained on the words."""
    import transformers

    if arch == "roberta":  # a byte-level BPE trained (here, offline) until every word is one token
        import tokenizers

        bpe = tokenizers.ByteLevelBPETokenizer()
        bpe.train_from_iterator([" " + w for w in words] * 2 + list(words) * 2, vocab_size=256 + len(_ROBERTA_SPECIALS) + 2 * sum(len(w) + 1 for w in words),
                                min_frequency=1, special_tokens=_ROBERTA_SPECIALS, show_progress=False)
        state = json.loads(bpe._tokenizer.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
        mask = transformers.AddedToken("<mask>", lstrip=True, rstrip=False)
        return transformers.RobertaTokenizer(vocab=state["vocab"], merges=merges, mask_token=mask)
    chars = sorted({c for w in words for c in w})
    tokens = list(dict.fromkeys(_BERT_SPECIALS + [".", ",", "'"] + words + chars + [f"##{c}" for c in chars] + ["##s"]))
    return transformers.BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)


def save_tiny_text_model(out, words: list[str], *, arch: str = "bert", task: str = "masked-lm", num_labels: int = 2,
                         hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0, max_positions: int = 64,
                         id2label: dict[int, str] | None = None):
    """Write a tiny Hugging Face text model with random weights (``seed``) and its tokenizer to ``out`` with
    ``save_pretrained``, for ``--model hf:OUT``: a BERT, RoBERTa or DistilBERT masked-LM or sequence
    classifier whose vocabulary is ``words`` (plus pieces). Nothing is downloaded. Returns the model."""
    import transformers

    if arch not in TEXT_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(TEXT_ARCHS)}, got {arch!r}")
    tok = _tokenizer(arch, [w.lower() for w in words] if arch != "roberta" else list(words))
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    if arch == "distilbert":
        config = transformers.DistilBertConfig(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=2 * hidden,
                                               max_position_embeddings=max_positions, **common)
    else:
        cls = transformers.RobertaConfig if arch == "roberta" else transformers.BertConfig
        extra = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id) if arch == "roberta" else {}
        config = cls(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * hidden,
                     max_position_embeddings=max_positions + (2 if arch == "roberta" else 0), **common, **extra)
    if task == "sequence-classification":
        config.num_labels = num_labels
        if id2label:
            config.id2label, config.label2id = dict(id2label), {v: k for k, v in id2label.items()}
    auto = transformers.AutoModelForMaskedLM if task == "masked-lm" else transformers.AutoModelForSequenceClassification
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = auto.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model
