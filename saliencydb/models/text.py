"""Hugging Face text models as plain classifiers over token tensors (docs/architecture.md, "models").

A text batch is one int64 tensor (B, 2, L): token ids over an attention mask (``data.text``). A
sequence classifier returns its logits; a masked-LM returns the vocabulary logits at each sentence's
one mask token, so that its loss is the cross-entropy there against the target token and its
prediction the argmax token. The LM head runs on the mask position only; every op in it acts per
position, so the logits are those of the full pass at that position."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import DataError, ModelError


def _mlm_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The LM head of a ...ForMaskedLM: hidden states (..., H) -> vocabulary logits (..., V)."""
    for name in ("cls", "lm_head", "predictions"):  # BERT, RoBERTa / XLM-R, ALBERT
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    if all(hasattr(model, n) for n in ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector")):  # DistilBERT
        return lambda h: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
    return None


class HFTextModel(nn.Module):
    """A Hugging Face sequence classifier or masked-LM: (B, 2, L) token tensors in, (B, K) logits out."""

    modality = "text"

    def __init__(self, model: nn.Module, task: str, pad_id: int, mask_id: int | None) -> None:
        super().__init__()
        self.model, self.task, self.pad_id, self.mask_id = model, task, int(pad_id), mask_id
        if task == "masked-lm" and _mlm_head(model) is None:
            raise ModelError(f"masked-lm model {type(model).__name__} has no LM head this tool knows (cls, lm_head, "
                             "predictions or DistilBERT's vocab_*); use a BERT, RoBERTa, ALBERT or DistilBERT masked-LM")

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (padding set to the pad id) and the attention mask of a (B, 2, L) batch."""
        if x.dim() != 3 or x.shape[1] != 2 or x.is_floating_point():
            raise DataError(f"a text model takes token tensors shaped (B, 2, L), got {x.dtype} {tuple(x.shape)}; "
                            "give it text data (jsonl:PATH or csv:PATH with a text column)")
        mask = x[:, 1]
        return torch.where(mask.bool(), x[:, 0], torch.full_like(x[:, 0], self.pad_id)), mask

    def mask_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The position of each row's one mask token."""
        hits = ids == self.mask_id
        if not bool((hits.sum(1) == 1).all()):
            raise DataError("every masked-lm sentence needs exactly one mask token")
        return hits.int().argmax(1)

    def embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The word embeddings of a batch's tokens (B, L, H): the input of token-level saliency."""
        ids, _ = self.unpack(x)
        return self.model.get_input_embeddings()(ids)

    def forward(self, x: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        ids, mask = self.unpack(x)
        given: dict[str, Any] = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": ids}
        if self.task == "sequence-classification":
            return self.model(attention_mask=mask, **given).logits
        hidden = self.model.base_model(attention_mask=mask, **given)[0]
        at = hidden[torch.arange(len(ids), device=ids.device), self.mask_positions(ids)]
        return _mlm_head(self.model)(at)  # looked up per call: a deep copy of this module uses its own head


def load_hf_text(spec: str, transformers: Any, source: str, config: Any, task: str,
                 random_seed: int | None = None) -> tuple[nn.Module, Any, int, list[str] | None]:
    """The wrapped model of an ``hf:`` text directory, its tokenizer transform, class count and the vocabulary
    (masked-LM; None for a classifier). ``random_seed``: the config's architecture with weights drawn under it."""
    from ..data.text import TokenTransform

    auto = transformers.AutoModelForMaskedLM if task == "masked-lm" else transformers.AutoModelForSequenceClassification
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar is noise on a command's stderr
    try:  # float32, and eager attention: per-sample and input gradients differentiate through every op
        if random_seed is None:
            model = auto.from_pretrained(source, dtype=torch.float32, attn_implementation="eager")
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(random_seed)
                model = auto.from_config(config, attn_implementation="eager").float()
    except Exception as e:  # transformers raises many types (OSError, ValueError, hub errors, ...)
        raise ModelError(f"model spec '{spec}': loading the {task} model from {source} failed ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    positions = int(getattr(config, "max_position_embeddings", 512) or 512)
    offset = int(getattr(config, "pad_token_id", 0) or 0) + 1 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
    transform = TokenTransform(source, task, min(512, positions - offset))
    tok = transform.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (getattr(config, "pad_token_id", None) or 0)
    if task == "masked-lm":
        size = int(config.vocab_size)
        names = [t if t is not None else f"<id {i}>" for i, t in enumerate(tok.convert_ids_to_tokens(list(range(size))))]
        return HFTextModel(model, task, pad, tok.mask_token_id), transform, size, names
    return HFTextModel(model, task, pad, None), transform, int(config.num_labels), None
