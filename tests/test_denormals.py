"""Subnormal floats are flushed to zero in every process that imports ``trainers``, in its
intra-op threads too (trainers/__init__.py: they made a trained GRU4Rec 3.4x slower)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import torch
import trainers  # noqa: F401  (sets the flag before any parallel operation)
torch.set_num_threads(2)
one = (torch.tensor([1e-39]) * 1.0).item()  # 1e-39 is subnormal in float32
many = (torch.full((4_000_000,), 1e-39) * 1.0).abs().sum().item()  # split over threads
print(one, many)
"""


def test_subnormals_are_flushed_to_zero_after_importing_trainers():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         check=True).stdout.split()
    assert [float(x) for x in out] == [0.0, 0.0]


def test_without_the_flag_the_same_product_is_subnormal():
    """The check above can fail: the same product without the flag keeps its value."""
    out = subprocess.run([sys.executable, "-c", "import torch; "
                          "print((torch.tensor([1e-39]) * 1.0).item())"],
                         capture_output=True, text=True, check=True).stdout
    assert 0.0 < float(out) < 1.2e-38
