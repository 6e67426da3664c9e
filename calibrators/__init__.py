"""Post-hoc calibration of a confidence score and the metrics that judge certainty and routing.

Pure: depends on numpy only (matplotlib is imported when a picture is drawn), never on ``router``.

A new calibrator is one module here with a ``Calibrator`` subclass declaring its ``kind``: every module is
imported below, so it registers (``CALIBRATORS``), loads from ``calibrator.json`` and, unless it says it
cannot, is one of the methods ``router calibrate --from-feedback`` fits.
"""

import importlib
import pkgutil

from calibrators.base import CALIBRATORS, Calibrator, fittable_kinds, from_dict, load
from calibrators.bootstrap import Estimate, bootstrap, calibrated_band
from calibrators.cost_quality import (
    CostQualityCurve,
    cost_at_quality,
    escalation_curve,
    oracle_curve,
    subsample,
    threshold_choice,
    threshold_curve,
)
from calibrators.drift import ks_critical_value, ks_statistic, psi
from calibrators.histogram import HistogramBinning
from calibrators.isotonic import IsotonicCalibrator
from calibrators.metrics import (
    BrierDecomposition,
    ReliabilityBins,
    adaptive_ece,
    auprc,
    auroc,
    brier_decomposition,
    brier_score,
    ece,
    mce,
    reliability_bins,
    sharpness,
)
from calibrators.plots import reliability_diagram, risk_coverage_plot, routing_plot
from calibrators.report import MetricResult, evaluate, write_report
from calibrators.routing import RoutingCurve, apgr, cpt, routing_curve
from calibrators.scaling import PlattScaling, TemperatureScaling
from calibrators.selective import (
    RiskCoverage,
    alignment,
    alignment_threshold,
    aurc,
    prr,
    risk_coverage_curve,
    youden_threshold,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CALIBRATORS",
    "BrierDecomposition",
    "Calibrator",
    "CostQualityCurve",
    "Estimate",
    "HistogramBinning",
    "IsotonicCalibrator",
    "MetricResult",
    "PlattScaling",
    "ReliabilityBins",
    "RiskCoverage",
    "RoutingCurve",
    "TemperatureScaling",
    "adaptive_ece",
    "alignment",
    "alignment_threshold",
    "apgr",
    "auprc",
    "aurc",
    "auroc",
    "bootstrap",
    "brier_decomposition",
    "brier_score",
    "calibrated_band",
    "cost_at_quality",
    "cpt",
    "ece",
    "escalation_curve",
    "evaluate",
    "fittable_kinds",
    "from_dict",
    "ks_critical_value",
    "ks_statistic",
    "load",
    "mce",
    "oracle_curve",
    "prr",
    "psi",
    "reliability_bins",
    "reliability_diagram",
    "risk_coverage_curve",
    "risk_coverage_plot",
    "routing_curve",
    "routing_plot",
    "sharpness",
    "subsample",
    "threshold_choice",
    "threshold_curve",
    "write_report",
    "youden_threshold",
]
