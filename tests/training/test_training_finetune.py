"""Fine-tuning from a checkpoint through the config: pretrain on public
classes, fine-tune privately on the others; only trainable leaves are
clipped, noised and changed."""

import json

import haiku as hk
import helpers_tiny_config
import numpy as np
import pytest

from dpeq.data import datasets
from dpeq.models import finetune
from dpeq.training import config as config_lib
from dpeq.training import loop

PUBLIC, PRIVATE = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def _config(**overrides):
  config = helpers_tiny_config.get_config("updates=2,micro=64,subset=512")
  config.eval.every_updates = 0
  config.training.augmult = 1
  return helpers_tiny_config.override(config, **overrides)


@pytest.fixture(scope="module")
def pretrained(fashion_mnist_dir, tmp_path_factory):
  """A finished non-private run on the public classes (its release/)."""
  del fashion_mnist_dir
  workdir = tmp_path_factory.mktemp("pretrain")
  loop.train(_config(dp__non_private=True, dp__noise_multiplier=None,
                     data__classes=PUBLIC), workdir=workdir)
  return workdir


def _released(workdir, name="last"):
  return finetune.load_params(workdir / "release" / f"params_{name}.npz")


def _leaves(params):
  return {(m, n): np.asarray(v)
          for m, n, v in hk.data_structures.traverse(params)}


def test_classes_are_kept_and_relabelled(fashion_mnist_dir):
  full = datasets.load("fashion_mnist", split="test", source="raw",
                       raw_dir=fashion_mnist_dir)
  part = datasets.load("fashion_mnist", split="test", source="raw",
                       raw_dir=fashion_mnist_dir, classes=(7, 2))
  assert part.info.num_classes == 2
  assert len(part) == np.sum(np.isin(full.labels, (7, 2)))
  np.testing.assert_array_equal(
      part.labels, np.where(full.labels[np.isin(full.labels, (7, 2))] == 7,
                            0, 1))
  np.testing.assert_array_equal(part.images,
                                full.images[np.isin(full.labels, (7, 2))])
  with pytest.raises(ValueError, match="distinct integer labels"):
    datasets.load("fashion_mnist", split="test", source="raw",
                  raw_dir=fashion_mnist_dir, classes=(3, 10))


@pytest.mark.parametrize("trainable", ["classifier", "all"])
def test_private_fine_tuning_starts_from_the_pretrained_body(
    pretrained, tmp_path, trainable):
  workdir = tmp_path / trainable
  loop.train(_config(data__classes=PRIVATE,
                     finetune__init_from=str(pretrained),
                     finetune__trainable=trainable), workdir=workdir)
  before, after = _leaves(_released(pretrained)), _leaves(_released(workdir))
  assert set(before) == set(after)
  head = [k for k in after if finetune.is_classifier(k[0])]
  assert head and all(after[k].shape[-1] == len(PRIVATE) for k in head
                      if k[1] == "w")
  body = [k for k in after if k not in head]
  for key in body:  # Frozen: bit-identical; trained: moved.
    same = np.array_equal(after[key], before[key])
    assert same == (trainable == "classifier"), key
  privacy = json.loads((workdir / "privacy.json").read_text())
  head_size = sum(after[k].size for k in head)
  assert privacy["noise_dimension"] == (
      head_size if trainable == "classifier"
      else sum(v.size for v in after.values()))
  assert privacy["sensitivity"] == 1.0 and privacy["noise_std"] == 1.0


def test_a_missing_pretraining_run_is_a_config_error(fashion_mnist_dir,
                                                     tmp_path):
  del fashion_mnist_dir
  missing = tmp_path / "not_run_yet"
  missing.mkdir()
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.finetune.init_from=.*finish the "
                           "pretraining run"):
    loop.train(_config(finetune__init_from=str(missing)),
               workdir=tmp_path / "run")
  with pytest.raises(config_lib.ConfigError, match="neither a dpeq workdir"):
    loop.train(_config(finetune__init_from=str(tmp_path / "none.npz")),
               workdir=tmp_path / "run2")
