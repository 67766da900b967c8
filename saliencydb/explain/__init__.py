"""Explanations over a database: input-space maps, GradCAM, profile figures, checks, a gallery.

Names are imported on first use: plotting stored profiles (``group_profiles``, the figures)
needs no torch; the explainers load it.
"""

from ..lazy import lazy_attributes

_WHERE = {
    "find_corrections": ".checks", "mask_pixels": ".checks", "masking": ".checks", "randomization": ".checks",
    "randomized_copy": ".checks", "smoothgrad": ".checks", "Explainer": ".context", "StoredSample": ".context",
    "Explanation": ".explanation", "explain_sample": ".explanation", "check_out_file": ".outputs", "gallery": ".gallery",
    "group_profiles": ".groups", "mean_profile": ".groups", "display_map": ".maps", "gradcam": ".maps", "spearman": ".maps",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
