"""Batch assembly: gather in order, micro-batches, sharding over 8 devices."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from dpeq.data import batching
from dpeq.data.datasets import ArrayDataset, DatasetInfo
from dpeq.privacy.sampling import BatchSelection


def _dataset(n=20, shape=(4, 4, 1)):
  images = np.random.default_rng(0).integers(0, 256, (n, *shape), np.uint8)
  info = DatasetInfo(name="toy", num_examples=n, num_classes=n,
                     image_shape=shape, mean=(0.5,), std=(0.25,))
  return ArrayDataset(images=images, labels=np.arange(n, dtype=np.int32),
                      info=info)


def test_gather_keeps_order_and_padding_rows_take_example_0():
  dataset = _dataset()
  selection = BatchSelection(indices=np.array([7, 3, 19, 3, 0, 0]),
                             mask=np.array([1, 1, 1, 1, 0, 0], bool))
  batch = batching.gather(dataset, selection)
  np.testing.assert_array_equal(batch["labels"], [7, 3, 19, 3, 0, 0])
  np.testing.assert_array_equal(batch["images"], dataset.images[[7, 3, 19, 3, 0, 0]])
  assert batch["images"].dtype == np.uint8 and batch["labels"].dtype == np.int32


def test_gather_rejects_bad_selections():
  dataset = _dataset()
  with pytest.raises(ValueError, match="num_examples=20"):
    batching.gather(dataset, BatchSelection(np.array([20]), np.array([True])))
  with pytest.raises(ValueError, match="equal length"):
    batching.gather(dataset, BatchSelection(np.array([1, 2]), np.array([True])))


def test_to_devices_on_one_device():
  mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))
  sharding = batching.batch_sharding(mesh)
  batch = batching.gather(_dataset(), BatchSelection(np.arange(4), np.ones(4, bool)))
  on_device = batching.to_devices(batch, sharding)
  assert on_device["images"].sharding == sharding
  np.testing.assert_array_equal(on_device["images"], batch["images"])
  with pytest.raises(ValueError, match="no axis 'data'"):
    batching.batch_sharding(mesh, "data")


_EIGHT_DEVICES = textwrap.dedent("""
    import json
    import jax, numpy as np
    from jax.sharding import Mesh
    from dpeq.data import augment, batching
    from dpeq.data.datasets import ArrayDataset, DatasetInfo
    from dpeq.privacy.sampling import BatchSelection

    rng = np.random.default_rng(0)
    n = 50
    images = rng.integers(0, 256, (n, 8, 8, 3), np.uint8)
    info = DatasetInfo(name="toy", num_examples=n, num_classes=n,
                       image_shape=(8, 8, 3), mean=(0.5,) * 3, std=(0.25,) * 3)
    dataset = ArrayDataset(images=images, labels=np.arange(n, dtype=np.int32),
                           info=info)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = batching.batch_sharding(mesh)
    indices = np.concatenate([rng.permutation(n)[:13], np.zeros(3, np.int64)])
    mask = np.arange(16) < 13
    selection = BatchSelection(indices=indices, mask=mask)
    assert batching.local_rows(16, sharding) == slice(0, 16)
    batch = batching.gather(dataset, selection, sharding=sharding)
    on_device = batching.to_devices((batch, selection.mask), sharding)
    out = {"num_devices": len(jax.devices()), "shards": []}
    for shard in on_device[0]["labels"].addressable_shards:
      out["shards"].append([shard.index[0].start, shard.index[0].stop,
                            np.asarray(shard.data).tolist()])
    out["labels"] = np.asarray(on_device[0]["labels"]).tolist()
    out["mask"] = np.asarray(on_device[1]).tolist()
    out["images_equal"] = bool(np.array_equal(on_device[0]["images"],
                                              images[indices]))
    config = augment.AugmentConfig(num_views=2, crop_padding=2, random_flip=True)
    fn = jax.jit(augment.views_fn(config, info.mean, info.std))
    key = jax.random.key(0)
    views = fn(key, on_device[0])
    local = jax.device_put(batch, jax.devices()[0])
    reference = fn(key, local)
    out["views_spec"] = str(views["images"].sharding.spec)
    out["views_equal"] = bool(np.array_equal(views["images"],
                                             reference["images"]))
    try:
      batching.to_devices(batching.gather(
          dataset, BatchSelection(np.arange(10), np.ones(10, bool))), sharding)
    except ValueError as e:
      out["error"] = str(e)
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_batches_and_views_shard_over_eight_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], env=env,
                          capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["num_devices"] == 8
  shards = sorted(out["shards"])
  assert [s[:2] for s in shards] == [[2 * i, 2 * i + 2] for i in range(8)]
  labels = sum((s[2] for s in shards), [])
  assert labels == out["labels"]
  assert out["mask"] == [True] * 13 + [False] * 3
  assert out["labels"][13:] == [0, 0, 0]
  assert out["images_equal"]
  assert out["views_equal"] and "batch" in out["views_spec"]
  assert "pad_multiple" in out["error"] and "8" in out["error"]


@pytest.mark.parametrize("change,message", [
    (dict(n=0), "the split is empty"),
    (dict(labels_offset=20), r"label 20 of example 0 is outside \[0, 20\)"),
    (dict(labels_offset=-1), r"label -1 of example 0 is outside"),
    (dict(shape=(4, 5, 1)), r"images are \(4, 5, 1\) but the dataset is"),
    (dict(dtype=np.float32), "images must be uint8"),
])
def test_bad_data_fails_with_a_message_that_names_the_problem(change, message):
  n = change.get("n", 20)
  images = np.zeros((n, *change.get("shape", (4, 4, 1))),
                    change.get("dtype", np.uint8))
  info = DatasetInfo(name="toy", num_examples=n, num_classes=20,
                     image_shape=(4, 4, 1), mean=(0.5,), std=(0.25,))
  labels = np.arange(n, dtype=np.int32) + change.get("labels_offset", 0)
  with pytest.raises(ValueError, match=message):
    ArrayDataset(images=images, labels=labels, info=info)
