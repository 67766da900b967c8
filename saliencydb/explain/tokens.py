"""One text sample's explanation: token-level saliency of its salient units (``saliency.input_space.token_saliency``),
its profile's top units, and a figure of both. Text databases only; images go through ``explanation``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QueryError
from ..results import Result
from .context import Explainer
from .explanation import Confidences, ExplainedSample, UnitRow
from .figures import _pyplot, _wrap


@dataclass
class ExplainedSentence(ExplainedSample):
    """The stored text sample explained: the sample's fields and its sentence."""

    text: str = ""


@dataclass
class TokenScore(Result):
    """One token of the sentence: its position, its string and its saliency (L2 norm of the gradient of the
    boosted-unit objective with respect to its word embedding)."""

    position: int
    token: str
    score: float


@dataclass
class TokenExplanation(Result):
    """An ``explain_text_sample`` result: the sentence, its token saliency and its top (and boosted) units."""

    sample: ExplainedSentence
    confidences: Confidences
    tokens: list[TokenScore]
    top_units: list[UnitRow]
    boosted_units: list[UnitRow]
    out: str | None

    def rows(self) -> list[dict]:
        """The tokens, one row each (the CSV output)."""
        return [t.to_dict() for t in self.tokens]

    def _repr_html_(self) -> str:
        from ..query.html import token_explanation_html

        return token_explanation_html(self)


def token_figure(out: str | Path, result: TokenExplanation) -> None:
    """A bar per token (its saliency) over the sentence's tokens, titled with the sample's label and prediction."""
    plt = _pyplot()
    scores = np.array([t.score for t in result.tokens])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(scores) + 2), 3.6))
    try:
        s = result.sample
        colours = ["#cf222e" if v >= scores.max() * 0.5 else "#8c959f" for v in scores]
        ax.bar(np.arange(len(scores)), scores, color=colours)
        ax.set_xticks(np.arange(len(scores)), [t.token for t in result.tokens], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("token saliency")
        ax.set_title(_wrap(f"sample {s.sample_id}: {s.text}\nlabel {s.label_name}, predicted {s.pred_name} "
                           f"({'correct' if s.correct else 'wrong'}); boosted: "
                           + ", ".join(f"{u.layer}[{u.channel}]" for u in result.boosted_units[:4]), 90), fontsize=9)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)


def explain_text_sample(ex: Explainer, sample_id: int, out: str | Path | None, *, top_k: int = 10, units=None) -> TokenExplanation:
    """Token saliency of one stored sentence, its figure written to ``out`` (when given)."""
    s = ex.sample(sample_id)
    top = ex.top_units(s.z, top_k)
    boosted = top if units is None else np.asarray(units, dtype=np.int64)
    scores = ex.token_map(s.x, s.y, units=boosted)
    ids = s.x[0, 0, : len(scores)]
    tokens = [TokenScore(i, tok, round(float(v), 8)) for i, (tok, v) in enumerate(zip(ex.transform.tokens(ids), scores))]
    top_rows = ex.unit_rows(top, s.z)
    meta = s.meta
    result = TokenExplanation(
        sample=ExplainedSentence(**{k: meta[k] for k in ("sample_id", "split", "key", "text", "label", "label_name", "pred",
                                                         "pred_name", "correct")}),
        confidences=Confidences(true_conf=float(meta["true_conf"]), pred_conf=float(meta["pred_conf"]), loss=float(meta["loss"])),
        tokens=tokens,
        top_units=[UnitRow(**r) for r in top_rows],
        boosted_units=[UnitRow(**r) for r in (top_rows if units is None else ex.unit_rows(boosted, s.z))],
        out=None if out is None else str(out),
    )
    if out is not None:
        try:
            token_figure(out, result)
        except OSError as e:
            raise QueryError(f"cannot write --out {str(out)!r}: {e.strerror or e}") from None
    return result
