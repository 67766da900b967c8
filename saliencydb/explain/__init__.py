"""Explanations over a database: input-space maps, GradCAM, profile figures, checks, a gallery.

Names are imported on first use: plotting stored profiles (``group_profiles``, the figures)
needs no torch; the explainers load it. Each answer is a typed result (``saliencydb.results``).
"""

from ..lazy import lazy_attributes

_WHERE = {
    "find_corrections": ".checks", "mask_pixels": ".checks", "masking": ".checks", "parse_levels": ".checks",
    "randomization": ".checks", "randomized_copy": ".checks", "smoothgrad": ".checks",
    "CheckedSample": ".checks", "Correction": ".checks", "Corrections": ".checks", "Masking": ".checks",
    "MaskingRow": ".checks", "NoiseLevel": ".checks", "Randomization": ".checks", "RandomizationStep": ".checks",
    "SmoothGrad": ".checks", "Explainer": ".context", "StoredSample": ".context",
    "Confidences": ".explanation", "ExplainedSample": ".explanation", "Explanation": ".explanation",
    "GradCamInfo": ".explanation", "MapStats": ".explanation", "UnitRow": ".explanation",
    "explain_sample": ".explanation", "ExplainedSentence": ".tokens", "TokenExplanation": ".tokens",
    "TokenScore": ".tokens", "explain_text_sample": ".tokens", "check_out_file": ".outputs", "Gallery": ".gallery", "GalleryEntry": ".gallery",
    "gallery": ".gallery", "GroupProfile": ".groups", "GroupProfiles": ".groups", "LayerMean": ".groups",
    "group_profiles": ".groups", "profile_plot": ".groups", "mean_profile": ".groups", "display_map": ".maps", "gradcam": ".maps", "spearman": ".maps",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
