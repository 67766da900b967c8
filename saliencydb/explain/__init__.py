"""Explanations over a database: input-space maps, GradCAM, profile figures, checks, a gallery."""

from .checks import find_corrections, mask_pixels, masking, randomization, randomized_copy, smoothgrad
from .context import Explainer, StoredSample
from .explanation import Explanation, check_out_file, explain_sample
from .gallery import gallery
from .groups import group_profiles, mean_profile
from .maps import display_map, gradcam, spearman

__all__ = ["Explainer", "StoredSample", "Explanation", "explain_sample", "check_out_file", "gallery", "group_profiles",
           "mean_profile", "masking", "find_corrections", "smoothgrad", "randomization", "randomized_copy",
           "mask_pixels", "display_map", "gradcam", "spearman"]
