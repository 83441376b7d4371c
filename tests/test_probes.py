"""The failure classes of benchmarks/probes/place_failures.py, on hand-made end states."""

import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def classify():
    spec = importlib.util.spec_from_file_location("place_failures", os.path.join(ROOT, "benchmarks", "probes", "place_failures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.classify


HALF, TOL = 0.02, 0.03
START = np.array([[0.0, 0.0, HALF], [0.1, 0.0, HALF], [0.2, 0.0, HALF]])
DISCS = np.array([[0.0, 0.15, 0.0], [0.1, 0.15, 0.0], [0.2, 0.15, 0.0]])


def _end(named_xyz, others=None):
    end = START.copy() if others is None else others.copy()
    end[0] = named_xyz
    return end


@pytest.mark.parametrize(
    "end, max_z, success, expected",
    [
        (_end([0.0, 0.15, HALF]), [0.1, HALF, HALF], True, "success"),
        (_end([0.01, 0.14, HALF]), [0.1, HALF, HALF], False, "on named disc, not let go"),
        (_end([0.2, 0.15, HALF]), [0.1, HALF, HALF], False, "on another disc"),
        (_end([0.05, 0.05, 0.12]), [0.12, HALF, HALF], False, "carried, still in the air"),
        (_end([0.05, 0.05, HALF]), [0.12, HALF, HALF], False, "carried, put down off every disc"),
        (_end([0.0, 0.0, HALF], np.array([[0, 0, HALF], [0.1, 0.05, HALF], [0.2, 0, HALF]])), [HALF, HALF, HALF], False,
         "moved another cube"),
        (_end([0.0, 0.0, HALF]), [HALF + 0.01, HALF, HALF], False, "no grasp"),
    ],
)
def test_each_ending_falls_in_its_class(classify, end, max_z, success, expected):
    out = classify(START, end, np.array(max_z, dtype=float), DISCS, named=0, disc=0, success=success, half=HALF, tol=TOL)
    assert out["class"] == expected
    assert out["named_to_named_disc_m"] == pytest.approx(np.linalg.norm(end[0, :2] - DISCS[0, :2]), abs=1e-4)
