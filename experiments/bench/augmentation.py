"""Benchmark: on-device augmentation vs. the model's update, and batch assembly.

  python -m experiments.bench.augmentation [--batch_size 256 --num_views 16
      --model cnn_tramer --repeats 10 --json out.json]

Measures, on the default JAX backend, with CIFAR-shaped data (32x32x3):
  augment     jitted `views_fn` (reflect-pad 4, random crop, random flip,
              K views per example) on a [B, 32, 32, 3] uint8 batch;
  fwd_bwd     forward + backward of a model (dpeq.models registry) on the
              same B * K views (mean cross-entropy, non-private);
  dp_step     dpeq.privacy.clipping.clipped_grad_sum on the same views: the
              per-example clipped gradient sum of one micro-batch;
  assembly    host batch assembly for a Poisson batch of expected size 4096
              from 50,000 examples: `gather` + `to_devices` (sharded over all
              local devices), including the transfer.
Times are medians over `--repeats` runs after one warm-up (compile) run.
"""

import argparse
import json
import statistics
import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from dpeq import models
from dpeq.data import augment, batching
from dpeq.data.datasets import ArrayDataset, DatasetInfo
from dpeq.privacy import clipping
from dpeq.privacy.sampling import BatchSelection, PoissonSampler

_SHAPE = (32, 32, 3)
_NUM_CLASSES = 10


def _median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # Warm-up: compile.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _dataset(num_examples: int) -> ArrayDataset:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_examples, *_SHAPE), np.uint8)
  labels = rng.integers(0, _NUM_CLASSES, num_examples).astype(np.int32)
  info = DatasetInfo(name="synthetic_cifar", num_examples=num_examples,
                     num_classes=_NUM_CLASSES, image_shape=_SHAPE,
                     mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
  return ArrayDataset(images=images, labels=labels, info=info)


def run(*, batch_size: int, num_views: int, model: str, repeats: int,
        assembly_batch_size: int, num_examples: int) -> dict:
  dataset = _dataset(num_examples)
  mesh = Mesh(np.array(jax.devices()), ("batch",))
  sharding = batching.batch_sharding(mesh)
  results = {"backend": jax.default_backend(),
             "device": str(jax.devices()[0].device_kind),
             "num_devices": len(jax.devices()), "batch_size": batch_size,
             "num_views": num_views, "model": model}

  # Augmentation of one micro-batch.
  config = augment.AugmentConfig(num_views=num_views, crop_padding=4,
                                 random_flip=True)
  make = jax.jit(augment.views_fn(config, dataset.info.mean, dataset.info.std))
  selection = BatchSelection(indices=np.arange(batch_size),
                             mask=np.ones(batch_size, bool))
  raw = batching.to_devices(batching.gather(dataset, selection), sharding)
  key = jax.random.key(0)
  results["augment_s"] = _median_seconds(lambda: make(key, raw), repeats)
  views = make(key, raw)

  # Model forward + backward on the same B * K views.
  net = models.create(model, num_classes=_NUM_CLASSES)
  flat_images = views["images"].reshape(-1, *_SHAPE)
  flat_labels = views["labels"].reshape(-1)
  params = net.init(jax.random.key(1), flat_images[:1])
  results["num_params"] = int(hk.data_structures.tree_size(params))

  def mean_loss(p, images, labels):
    logits = net.apply(p, images, is_training=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grad = jax.jit(jax.grad(mean_loss))
  results["fwd_bwd_s"] = _median_seconds(
      lambda: grad(params, flat_images, flat_labels), repeats)

  # The DP micro-step: per-example clipped gradient sum over K views.
  def loss_fn(p, example_views):
    logits = net.apply(p, example_views["images"], is_training=True)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, example_views["labels"])
    return losses, {}

  mask = jnp.ones(views["labels"].shape[0], bool)
  dp_step = jax.jit(lambda p, v, m: clipping.clipped_grad_sum(
      loss_fn, p, v, m, l2_clip_norm=1.0).grad_sum)
  results["dp_step_s"] = _median_seconds(lambda: dp_step(params, views, mask),
                                         repeats)

  # Host batch assembly: Poisson selection -> gather -> device_put.
  sampler = PoissonSampler(num_examples=num_examples,
                           expected_batch_size=assembly_batch_size, seed=1,
                           pad_multiple=len(jax.devices()))
  step = iter(range(10**9))
  results["assembly_batch_size"] = assembly_batch_size

  def assemble():
    selection = sampler.batch(next(step))
    batch = batching.gather(dataset, selection, sharding=sharding)
    return batching.to_devices((batch, selection.mask), sharding)

  def gather_only():
    return batching.gather(dataset, sampler.batch(next(step)))

  results["assembly_s"] = _median_seconds(assemble, repeats)
  results["gather_s"] = _median_seconds(gather_only, repeats)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--num_views", type=int, default=16)
  parser.add_argument("--model", default="cnn_tramer",
                      help=f"one of {', '.join(models.available())}")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--assembly_batch_size", type=int, default=4096)
  parser.add_argument("--num_examples", type=int, default=50_000)
  parser.add_argument("--json", default=None, help="also write results here")
  args = parser.parse_args()
  results = run(batch_size=args.batch_size, num_views=args.num_views,
                model=args.model, repeats=args.repeats,
                assembly_batch_size=args.assembly_batch_size,
                num_examples=args.num_examples)
  for name, value in results.items():
    if name.endswith("_s"):
      print(f"{name[:-2]:>20}: {1e3 * value:10.2f} ms")
    else:
      print(f"{name:>20}: {value}")
  print(f"augment / fwd_bwd = {results['augment_s'] / results['fwd_bwd_s']:.3f}, "
        f"augment / dp_step = {results['augment_s'] / results['dp_step_s']:.3f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
