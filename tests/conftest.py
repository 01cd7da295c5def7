"""Shared pytest fixtures for dpeq."""

import os

# Tests run on CPU with deterministic, quiet defaults.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Small numpy solves run up to 10x slower with BLAS threads on 2 busy cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

from dpeq import paths  # noqa: E402


def _shared_data_or_skip(name: str):
  """shared/data/<name>, or skip: online checkouts have no shared folder."""
  path = paths.shared_data_dir(name)
  if path is None:
    pytest.skip(f"../shared/data/{name} is not present")
  return path


@pytest.fixture(scope="session")
def fashion_mnist_dir():
  """The original Fashion-MNIST files, or skip when the checkout has none."""
  return _shared_data_or_skip("fashion_mnist")


@pytest.fixture(scope="session")
def cifar10_dir():
  """The original CIFAR-10 python batches (with MD5SUMS), or skip."""
  return _shared_data_or_skip("cifar10")
