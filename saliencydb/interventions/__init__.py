"""Interventions that test whether a sample's salient filters are responsible for its mistake (docs/architecture.md, "The method"):
pruning, perturbing or fine-tuning them against random and least-salient controls, on one sample, over a
split (with bootstrap intervals), on a whole error group (with side effects), and adversarial parameter
saliency; and the boolean weight mask of a selection of units (``write_mask``, for methods that edit only
those weights). Every edit is made on a private copy of the model and undone in place after each attempt.
Each answer is a typed result (``saliencydb.results``)."""

from .adversarial import AdversarialAgreement, AdversarialProfiles, AgreementRow, adversarial_agreement, adversarial_profiles
from .bench import Bench
from .editor import FilterEditor
from .figures import validate_figure
from .filters import (CHOICES, LEAST_SALIENT, RANDOM, SALIENT, WHOLE_NETWORK, check_k, choose_filters,
                      describe_units, draw_seed, least_salient_filters, parse_eps, parse_ks, random_filters, salient_filters)
from .groups import ClusterEffect, GroupAttempt, GroupFix, fix_group, group_records
from .mask import MaskedParameter, MaskResult, MaskUnit, write_mask
from .methods import DEFAULT_LR, DEFAULT_SIGMA, METHODS, edited, grad_scales
from .record import attempts_table, new_run_id, write_attempts
from .sample import Attempt, Intervention, InterventionSample, intervene, sample_attempts, sample_records
from .sweep import (Estimate, PairedDifference, Validation, ValidationRow, ValidationSettings, bootstrap, bootstrap_ci,
                    check_draws, validate)

__all__ = [
    "AdversarialAgreement", "AdversarialProfiles", "AgreementRow", "adversarial_agreement", "adversarial_profiles",
    "Bench", "FilterEditor", "validate_figure",
    "CHOICES", "LEAST_SALIENT", "RANDOM", "SALIENT", "WHOLE_NETWORK", "check_k", "choose_filters",
    "describe_units", "draw_seed", "least_salient_filters", "parse_eps", "parse_ks", "random_filters", "salient_filters",
    "ClusterEffect", "GroupAttempt", "GroupFix", "fix_group", "group_records",
    "MaskedParameter", "MaskResult", "MaskUnit", "write_mask",
    "DEFAULT_LR", "DEFAULT_SIGMA", "METHODS", "edited", "grad_scales", "attempts_table", "new_run_id",
    "write_attempts", "Attempt", "Intervention", "InterventionSample", "intervene", "sample_attempts", "sample_records",
    "Estimate", "PairedDifference", "Validation", "ValidationRow", "ValidationSettings", "bootstrap", "bootstrap_ci", "check_draws", "validate",
]
