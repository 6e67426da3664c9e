"""PNG pictures and the markdown report, and the package's purity (no router import, lazy matplotlib)."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import calibrators
from calibrators import evaluate, reliability_diagram, risk_coverage_plot, routing_plot, write_report

PACKAGE = Path(calibrators.__file__).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random(n)
    labels = (rng.random(n) < truth).astype(float)
    strong = np.maximum(labels, rng.random(n) < 0.6).astype(float)
    return np.sqrt(truth), labels, strong


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_each_picture_is_a_png(tmp_path) -> None:
    confidences, labels, strong = overconfident(500, 0)
    for path in (
        reliability_diagram(confidences, labels, tmp_path / "r.png", n_bins=10),
        risk_coverage_plot(confidences, labels, tmp_path / "rc.png"),
        routing_plot(confidences, labels, strong, tmp_path / "routing.png"),
    ):
        width, height = png_size(path)
        assert width > 500 and height > 400


def test_pictures_handle_degenerate_data(tmp_path) -> None:
    reliability_diagram([1.0, 1.0, 1.0], [1, 1, 1], tmp_path / "r.png")
    risk_coverage_plot([0.2, 0.9], [1, 1], tmp_path / "rc.png")
    assert png_size(tmp_path / "r.png") and png_size(tmp_path / "rc.png")
    with pytest.raises(ValueError, match="strong model better"):
        routing_plot([0.2, 0.9], [1, 0], [1, 0], tmp_path / "routing.png")


def test_report_embeds_pictures_and_a_metrics_table_with_counts(tmp_path) -> None:
    confidences, labels, strong = overconfident(400, 1)
    report = write_report(
        tmp_path / "out",
        confidences,
        labels,
        weak_correct=labels,
        strong_correct=strong,
        n_resamples=50,
        title="Sample scorer",
    )
    text = report.read_text()
    assert text.startswith("# Sample scorer")
    for picture in ("reliability.png", "risk_coverage.png", "routing.png"):
        assert f"]({picture})" in text
        png_size(report.parent / picture)
    positives = int(labels.sum())
    row = next(line for line in text.splitlines() if line.startswith("| ECE"))
    assert row.count("|") == 7 and f"| 400 | {positives} |" in row and "lower is better" in row
    for label in ("AUROC", "AUPRC", "Brier reliability", "PRR", "Alignment", "APGR", "CPT(50%)", "sharpness"):
        assert f"| {label}" in text, label
    assert "overconfident" in text and "sampling noise alone" in text


def test_report_marks_undefined_metrics_instead_of_failing(tmp_path) -> None:
    report = write_report(tmp_path, [0.6, 0.7, 0.8, 0.9, 0.95], [1, 1, 1, 1, 1], n_resamples=20)
    text = report.read_text()
    assert "| AUROC | undefined | AUROC needs both classes" in text
    assert "| ECE (15 equal-width bins) | 0." in text


def test_evaluate_returns_estimates_with_counts() -> None:
    confidences, labels, strong = overconfident(300, 2)
    results = {r.spec.key: r for r in evaluate(confidences, labels, n_resamples=30)}
    assert "apgr" not in results
    ece = results["ece"].estimate
    assert ece is not None and ece.value == pytest.approx(calibrators.ece(confidences, labels))
    assert (ece.n, ece.positives) == (300, int(labels.sum()))
    with_routing = evaluate(confidences, labels, weak_correct=labels, strong_correct=strong, n_resamples=30)
    apgr = next(r.estimate for r in with_routing if r.spec.key == "apgr")
    assert apgr is not None and apgr.value == pytest.approx(calibrators.apgr(confidences, labels, strong))
    with pytest.raises(ValueError, match="both weak_correct and strong_correct"):
        evaluate(confidences, labels, weak_correct=labels)


def test_package_imports_only_numpy_and_itself() -> None:
    allowed = {
        "calibrators",
        "numpy",
        "matplotlib",
        "__future__",
        "abc",
        "collections",
        "dataclasses",
        "functools",
        "importlib",  # with pkgutil: __init__ imports every module, so each calibrator registers
        "json",
        "pathlib",
        "pkgutil",
        "typing",
    }
    for source in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{source.name} imports {name}"


def test_import_is_light() -> None:
    code = (
        "import sys, calibrators; "
        "heavy = [m for m in ('matplotlib', 'router', 'policies', 'train', 'sklearn', 'scipy', 'torch') "
        "if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
