"""Known defects the conformance suites found in implementations of this repository.

Each entry marks the failing case as a strict xfail, naming the defect: the suite
still runs it, and once the implementation is fixed the case passes (XPASS) and
fails the run until its entry here is removed.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest

HERE = Path(__file__).parent

KNOWN_DEFECTS = {
    "test_output_keeps_shape_and_dtype[[]slerp-bfloat16-*[]]":
        "slerp returns float32 for bfloat16 inputs (slerp_tensors computes in float32 and does "
        "not cast back); every other method keeps the input dtype",
    "test_output_keeps_shape_and_dtype[[]slerp-float16-*[]]":
        "slerp returns float32 for float16 inputs (slerp_tensors computes in float32 and does "
        "not cast back)",
    "test_suggestions_are_points_of_the_unit_cube[[]cmaes-1-genes[]]":
        "cmaes on a one-gene space: pycma raises 'not yet initialized (dimension needed)' on "
        "the first complete generation (pycma does not support dimension 1)",
    "test_a_model_with_nan_weights_gives_a_failed_result[[]lm_eval[]]":
        "lm_eval scores a model with NaN weights as ok (exact_match 0.0) instead of failing "
        "it: its logits are never checked for finite values",
    "test_closing_another_executor_leaves_this_one_working[[]ray[]]":
        "closing a Ray executor shuts down the Ray runtime even when it did not start it "
        "(RayExecutor sets _owns_runtime whenever address is None), which kills the actors of "
        "any other Ray executor, or of the user's own ray.init()",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.parent != HERE:
            continue
        for pattern, reason in KNOWN_DEFECTS.items():
            if fnmatch(item.name, pattern):
                item.add_marker(pytest.mark.xfail(reason=f"known defect: {reason}", strict=True))
