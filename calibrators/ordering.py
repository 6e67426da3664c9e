"""Prefix sums along a score ordering that do not depend on how tied scores happen to be ordered."""

from __future__ import annotations

import numpy as np

from calibrators.validation import FloatArray


def expected_prefix_sums(keys: FloatArray, values: FloatArray, *, descending: bool) -> FloatArray:
    """``out[k-1]`` is the expected sum of ``values`` over the first ``k`` items sorted by ``keys``, with
    ties broken uniformly at random.

    Within a run of ``m`` tied keys whose values sum to ``s``, each position adds ``s / m``. Curves built on
    this (risk-coverage, routing) are then a function of the scores alone: a scorer that says the same
    thing for every item gets exactly the random-ordering curve, and a coarse scorer (ten distinct values,
    say) is not flattered or penalised by the input order.
    """
    order = np.argsort(-keys if descending else keys, kind="stable")
    ranked, sorted_values = keys[order], values[order]
    starts = np.flatnonzero(np.append(True, ranked[1:] != ranked[:-1]))
    sizes = np.diff(np.append(starts, len(keys)))
    run_totals = np.add.reduceat(sorted_values, starts)
    before = np.cumsum(run_totals) - run_totals
    run = np.repeat(np.arange(len(starts)), sizes)
    position_in_run = np.arange(len(keys)) - starts[run] + 1
    return before[run] + position_in_run * (run_totals / sizes)[run]
