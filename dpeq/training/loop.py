"""The training loop: one experiment config, end to end, resumable.

`train(config, workdir=...)` loads the data, resolves sigma and T, builds the
model and the private update, and runs T DP-SGD updates on a mesh of all
devices (of all processes). Per update:

  host:    sampler.batch(step) -> padded indices + mask (same on every host)
  device:  for each micro-batch of micro_batch_size * num_devices rows
           (dpeq.training.micro_batching, the one micro-batching path):
             clipped_grads (augmentation key fold_in(fold_in(data_key, step),
             micro_step)), accumulated; micro-steps never touch the update
             step, the averages or the ledger
           apply: one noise draw, one optimizer step, one averaging step
  host:    ledger.record(1); metrics; evaluation; checkpoint.

Outputs in the workdir: config.json (the resolved config), privacy.json
(sigma, q, T, delta, epsilon, accountant, the DpEvent), metrics.jsonl and
TensorBoard events (dpeq.training.run_log), checkpoints/ (see
dpeq.training.checkpointing for the resume rule), report.md and plots, and
release/ (what may be published, see below).

Threat model: what is SECRET is the run's randomness (the noise key and the
sampler's seed, drawn from OS entropy: secret_randomness.json and every
checkpoint hold it) and the non-private diagnostics; what may be RELEASED is
release/: the final and averaged parameters, privacy.json and the private
metrics.

Guarantee: the run is (epsilon, delta)-DP for the (epsilon, delta) of
privacy.json (delta including the noise sampler's cut tail), under the
adjacency of the configured sampler, for the release of every intermediate
update (hence of all parameters, averages and metrics derived from them),
against anyone who does not know the secret randomness. Training metrics
computed from the non-noised per-example statistics (loss, train accuracy,
batch size, gradient norms, fraction clipped) are NOT covered: they are
logged under the prefix "nonprivate/" as diagnostics for the person running
the experiment, and left out of release/. With
config.dp.reproducible_seed the randomness is public and the run is not
private against anyone who knows that seed.
"""

import functools
import json
import os
import pathlib
import time
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from dpeq import data as data_lib
from dpeq import models as models_lib
from dpeq.data import batching
from dpeq.models import finetune
from dpeq.training import (
  batch_stats,
  checkpointing,
  distributed,
  evaluation,
  metrics,
  release,
  report,
  resume,
  secret_file,
)
from dpeq.training import config as config_lib
from dpeq.training import per_example_grads as per_example_grads_lib
from dpeq.training import run_log as run_logging
from dpeq.training import update as update_lib
from dpeq.training.micro_batching import MicroBatching

ConfigError = config_lib.ConfigError
CONFIG_FILE = "config.json"
PRIVACY_FILE = "privacy.json"
SPARSITY_EPS = (1e-5, 1e-4, 1e-3, 1e-2)
NON_PRIVATE = run_logging.NON_PRIVATE_PREFIX
# Training record key: seconds this process has trained (evaluations
# excluded; restarts at 0 on a resume), under the non-private prefix.
TRAIN_SECONDS = "train_seconds"


def load_data(config: config_dict.ConfigDict):
  """The (train, eval) ArrayDatasets of `config.data` (first `subset` rows).

  Raises:
    ConfigError: when the data cannot be found or read as configured.
  """
  d = config.data
  kwargs = dict(source=d.source, data_dir=d.data_dir, manual_dir=d.manual_dir,
                raw_dir=d.raw_dir, cache_dir=d.cache_dir,
                max_examples=d.subset, classes=tuple(d.classes) or None)
  try:
    train = data_lib.load(d.dataset, split=d.train_split, **kwargs)
    evaluation_set = data_lib.load(d.dataset, split=d.eval_split, **kwargs)
  except (ValueError, OSError) as e:  # DatasetNotFoundError is a ValueError
    raise ConfigError(
        f"config.data (dataset={d.dataset!r}, source={d.source!r}) cannot be "
        f"loaded: {e}") from None
  return train, evaluation_set


def make_loss_fn(apply_fn):
  """Per-example loss over K views: (cross-entropy [K], aux).

  aux: "loss" (the mean over the views, i.e. the trained objective) and
  "correct" (1.0 if view 0 is classified correctly).
  """

  def loss_fn(params, views):
    logits = apply_fn(params, views["images"], is_training=True)
    losses = metrics.cross_entropy(logits, views["labels"])
    correct = jnp.argmax(logits[0]) == views["labels"][0]
    return losses, {"loss": jnp.mean(losses),
                    "correct": correct.astype(jnp.float32)}

  return loss_fn


def _sparsity_record(prefix: str, values) -> dict[str, float]:
  return {f"sparsity/{prefix}/{eps:.0e}".replace("e-0", "e-"): float(v)
          for eps, v in zip(SPARSITY_EPS, values, strict=True)}


def _write_json(path: pathlib.Path, value: Any) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(run_logging.to_python(value), indent=2) + "\n")
  os.replace(tmp, path)


def _privacy_summary(config, plan, ledger) -> dict[str, Any]:
  """privacy.json: the guarantee after the ledger's updates (the ledger's
  epsilon and delta), with the plan's numbers (sensitivity, noise std)."""
  summary = {**plan.to_dict(), **ledger.to_dict()}
  summary["reproducible_seed"] = config.dp.reproducible_seed
  summary["dp_event"] = repr(plan.dp_event(num_updates=ledger.num_updates))
  return summary


class _Run:
  """Data, devices and jitted steps of one call to `train`."""

  def __init__(self, config):
    """Loads the data and resolves the config (no compilation yet)."""
    self.is_chief = jax.process_index() == 0
    self.train_set, self.eval_set = load_data(config)
    self.config = cfg = config_lib.resolve(
        config, num_examples=len(self.train_set))
    # The one owner of the guarantee's numbers, calibrated to the data.
    self.plan = config_lib.privacy_plan(cfg, num_examples=len(self.train_set))
    self.num_updates = cfg.training.num_updates
    self.mesh = distributed.batch_mesh()
    self.num_devices = self.mesh.size
    self.replicated = distributed.replicated(self.mesh)
    self.batch_sharding = batching.batch_sharding(
        self.mesh, distributed.BATCH_AXIS)
    if cfg.eval.batch_size % self.num_devices:
      raise ConfigError(
          f"config.eval.batch_size={cfg.eval.batch_size} must be a multiple "
          f"of the {self.num_devices} devices.")
    self.micro_batching = MicroBatching(
        micro_batch_size=cfg.training.micro_batch_size,
        num_devices=self.num_devices)
    self.eval_on_training_data = config_lib.eval_overlaps_training(cfg)
    if cfg.finetune.init_from is not None:  # Before any compilation.
      try:
        self.pretrained = finetune.pretrained_params_path(
            cfg.finetune.init_from, params_name=cfg.finetune.params_name)
      except ValueError as e:
        raise ConfigError(
            f"config.finetune.init_from={cfg.finetune.init_from!r}: {e}"
        ) from None

  def build(self, randomness) -> None:
    """Sampler, model, private update, jitted steps and the initial
    TrainState; `randomness` is the run's RunRandomness."""
    self.sampler = self.plan.sampler(
        seed=randomness.sampler_seed(),
        pad_multiple=self.micro_batching.rows_per_step)
    cfg, info = self.config, self.train_set.info
    try:
      self.model = models_lib.create(cfg.model.name,
                                     num_classes=info.num_classes,
                                     **cfg.model.kwargs.to_dict())
    except ValueError as e:
      raise ConfigError(f"config.model ({cfg.model.name!r}): {e}") from None
    loss_fn = make_loss_fn(self.model.apply)
    self._check_per_example_grads(loss_fn, info.image_shape)
    trainable = cfg.finetune.trainable
    self.partition = (None if trainable == "all" else functools.partial(
        finetune.split_trainable, trainable=trainable))
    self.private = update_lib.make_private_update(
        loss_fn=loss_fn,
        optimizer=config_lib.make_optimizer(cfg),
        plan=self.plan,
        ema_decays=tuple(cfg.training.ema_decays),
        polyak=cfg.training.polyak,
        partition=self.partition,
        views_fn=data_lib.views_fn(config_lib.augment_config(cfg), info.mean,
                                   info.std),
        per_example_gradients=per_example_grads_lib.strategy(
            cfg.training.per_example_grads),
        # The l0-eps sparsity of the noisy mean handed to the optimizer
        # (post-processing: no extra privacy cost).
        noisy_grad_metrics=lambda noisy: {
            "grad_sparsity": metrics.l0_sparsity(noisy, eps=SPARSITY_EPS)})
    # The model's initialisation is public; noise and augmentation are not.
    self.data_key = randomness.augmentation_key()
    self._compile(self._initial_params(info.image_shape),
                  randomness.noise_key())

  def _initial_params(self, image_shape):
    """The model's initialisation (public seed), or the pretrained
    parameters of config.finetune (a fresh classifier if so configured)."""
    cfg = self.config
    params = jax.jit(self.model.init)(
        jax.random.key(cfg.seed), jnp.zeros((1, *image_shape), jnp.float32))
    if cfg.finetune.init_from is None:
      return params
    try:
      return finetune.restore_for_task(
          restored=finetune.load_params(self.pretrained), fresh=params,
          replace_head=cfg.finetune.replace_classifier)
    except (ValueError, OSError) as e:
      raise ConfigError(
          f"config.finetune.init_from={cfg.finetune.init_from!r}: {e}"
      ) from None

  def _check_per_example_grads(self, loss_fn, image_shape):
    """training.per_example_grads='ghost' on a model it cannot run: say so."""
    name = self.config.training.per_example_grads
    views = {"images": jax.ShapeDtypeStruct((1, 1, *image_shape), jnp.float32),
             "labels": jax.ShapeDtypeStruct((1, 1), jnp.int32)}
    params = jax.eval_shape(self.model.init, jax.random.key(0),
                            jnp.zeros((1, *image_shape), jnp.float32))
    try:
      per_example_grads_lib.check_supported(name, loss_fn, params, views)
    except ValueError as e:
      raise ConfigError(f"config.training.per_example_grads={name!r}: {e}"
                        ) from None

  def _compile(self, params, noise_key):
    """Jitted pieces with their shardings (params replicated, rows split)."""
    rep, rows = self.replicated, self.batch_sharding
    private = self.private

    def init(params, noise_key):
      return private.init(params, key=noise_key)

    self.state = jax.jit(init, out_shardings=rep)(params, noise_key)
    # The noised coordinates: the trainable parameters.
    self.noise_dimension = hk.data_structures.tree_size(
        self.state.params if self.partition is None
        else self.partition(self.state.params)[0])

    def micro_step(params, batch, mask, data_key, step, micro_step):
      key = jax.random.fold_in(jax.random.fold_in(data_key, step), micro_step)
      clipped = private.clipped_grads(params, batch, mask, key=key)
      return clipped.totals(), batch_stats.micro_batch_stats(clipped, mask)

    self.micro_step = jax.jit(
        micro_step, in_shardings=(rep, rows, rows, rep, rep, rep),
        out_shardings=rep)
    self.accumulate = jax.jit(batch_stats.merge, out_shardings=rep)
    self.apply = jax.jit(private.apply, out_shardings=rep)
    self.param_sparsity = jax.jit(
        lambda p: metrics.l0_sparsity(p, eps=SPARSITY_EPS), out_shardings=rep)

  # --------------------------------------------------------------------------

  def run_update(self, step: int):
    """One logical batch; returns (clipped totals and stats, metrics)."""
    size = self.micro_batching.rows_per_step

    def micro_step(micro, part):
      raw = batching.gather(self.train_set, part, sharding=self.batch_sharding)
      local_mask = part.mask[batching.local_rows(size, self.batch_sharding)]
      batch, mask = batching.to_devices((raw, local_mask), self.batch_sharding)
      return self.micro_step(self.state.params, batch, mask, self.data_key,
                             np.int32(step), np.int32(micro))

    total = self.micro_batching.accumulate(
        self.sampler.batch(step), micro_step=micro_step,
        merge=self.accumulate)
    self.state, update_metrics = self.apply(self.state, total[0])
    return total, update_metrics

  def training_record(self, step, ledger, total, update_metrics):
    clipped, stats = distributed.to_host(total)
    m = distributed.to_host(update_metrics)
    diagnostics = batch_stats.diagnostics(  # NOT covered by epsilon
        clipped, stats, m, noise_dimension=self.noise_dimension,
        expected_batch_size=self.plan.expected_batch_size)
    return {
        "step": step,
        "epsilon": ledger.epsilon(),
        "noise_std": float(m["noise_std"]),
        # Post-processing of the noisy mean gradient: private.
        "noisy_grad_norm": float(m["noisy_grad_norm"]),
        "update_norm": float(m["update_norm"]),
        **_sparsity_record("grad", m["grad_sparsity"]),
        **{NON_PRIVATE + key: value for key, value in diagnostics.items()},
    }

  def evaluation_records(self, step, epsilon):
    cfg = self.config
    records = []
    for name in cfg.eval.params:
      params = (self.state.params if name == "last"
                else self.state.averages[name])
      result = evaluation.evaluate(
          self.model.apply, params, self.eval_set,
          batch_size=cfg.eval.batch_size, mean=self.train_set.info.mean,
          std=self.train_set.info.std, sharding=self.batch_sharding)
      record = {"step": step, "params": name, "epsilon": epsilon,
                "accuracy": result["top1"], "top5": result["top5"],
                "loss": result["loss"], "brier": result["brier"],
                "ece": result["ece"]}
      if self.eval_on_training_data:
        record[run_logging.EVAL_ON_TRAINING_DATA] = True
      record.update(_sparsity_record(
          "params", distributed.to_host(self.param_sparsity(params))))
      records.append(record)
    return records


def _announce(run: _Run, workdir: pathlib.Path, start: int) -> None:
  """Writes config.json and privacy.json; prints the config, sigma and T."""
  cfg, T = run.config, run.num_updates
  full_run = run.plan.ledger(noise_dimension=run.noise_dimension,
                             num_updates=T)
  _write_json(workdir / CONFIG_FILE, cfg.to_dict())
  _write_json(workdir / PRIVACY_FILE, _privacy_summary(cfg, run.plan, full_run))
  print(f"Resolved config:\n{cfg}")
  print(f"noise_multiplier (sigma) = {cfg.dp.noise_multiplier:.6g}, "
        f"num_updates (T) = {T}, sampling rate q = "
        f"{run.sampler.sampling_rate:.6g}, epsilon = "
        f"{full_run.epsilon():.6g} at delta = {full_run.total_delta():.6g} "
        f"({cfg.dp.accountant}, {cfg.dp.sampling}); {run.num_devices} "
        f"device(s), {jax.process_count()} process(es); "
        + (f"resuming at update {start}." if start else "starting."),
        flush=True)
  if cfg.dp.reproducible_seed is not None:
    print(f"WARNING: config.dp.reproducible_seed={cfg.dp.reproducible_seed}: "
          "the noise and the batches follow from this public seed; the run "
          "is NOT private against anyone who knows it.", flush=True)


def train(config: config_dict.ConfigDict, *, workdir: str | os.PathLike
          ) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: an experiment config (validated and resolved here).
    workdir: the run directory (created; an earlier run there is resumed).

  Returns:
    Final metrics: "epsilon", "delta" (the guarantee, delta including the
    noise sampler's cut tail), "noise_multiplier", "num_updates", and per
    evaluated params NAME: "NAME/accuracy", "NAME/top5", "NAME/loss",
    "NAME/brier", "NAME/ece".

  Raises:
    ConfigError: for a config that does not fit the data, the devices or
      the checkpoints in `workdir`.
  """
  dist = config.distributed
  distributed.initialize(coordinator_address=dist.coordinator_address,
                         num_processes=dist.num_processes,
                         process_id=dist.process_id)
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".dpeq_write_probe"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise ConfigError(
        f"workdir {str(workdir)!r} cannot be written ({e.strerror or e}): "
        "pass a writable directory with --workdir.") from None
  run = _Run(config)
  cfg, T = run.config, run.num_updates
  checkpointer = checkpointing.Checkpointer(workdir, keep=cfg.checkpoint.keep)
  metrics_path = workdir / run_logging.METRICS_FILE
  steps, unreadable = resume.compatible_steps(run, checkpointer)
  randomness = secret_file.load_or_create(
      workdir, reproducible_seed=cfg.dp.reproducible_seed,
      resuming=bool(steps))
  run.build(randomness)
  ledger = run.plan.ledger(noise_dimension=run.noise_dimension)
  start = resume.restore(run, checkpointer, ledger, metrics_path, steps,
                         unreadable)
  if run.is_chief:
    _announce(run, workdir, start)

  writer = (run_logging.MetricsWriter(workdir,
                                      tensorboard=cfg.logging.tensorboard)
            if run.is_chief else None)
  bar = run_logging.ProgressBar(
      total=T, initial=start,
      enabled=run.is_chief and cfg.logging.progress_bar)
  fingerprint = resume.fingerprint(cfg)

  def save(step):
    # The record holds no key: the randomness follows from the secret file.
    checkpointer.save(step, state=run.state, record={
        "config": fingerprint,
        "ledger": {"num_updates": ledger.num_updates},
        "metrics_bytes": checkpointing.metrics_length(metrics_path),
    })

  def write(record):
    if writer is not None:
      writer.write(record)

  # Seconds this process spent training, evaluations excluded. A timing
  # side channel (it follows the Poisson batch sizes): logged as non-private.
  clock = {"start": time.perf_counter(), "evaluating": 0.0}

  def evaluate(step):
    began = time.perf_counter()
    records = run.evaluation_records(step, ledger.epsilon())
    for record in records:
      write(record)
    clock["evaluating"] += time.perf_counter() - began
    return records

  try:
    for step in range(start, T):
      total, update_metrics = run.run_update(step)
      ledger.record(1)
      done = step + 1
      eval_due = done == T or (cfg.eval.every_updates
                               and done % cfg.eval.every_updates == 0)
      if done % cfg.logging.every_updates == 0 or done == T or eval_due:
        record = run.training_record(done, ledger, total, update_metrics)
        record[NON_PRIVATE + TRAIN_SECONDS] = (
            time.perf_counter() - clock["start"] - clock["evaluating"])
        write(record)
        bar.update(done, epsilon=record["epsilon"],
                   train_accuracy=record[NON_PRIVATE + "train_accuracy"])
      if eval_due and done < T:
        evaluate(done)
      if done == T or (cfg.checkpoint.every_updates
                       and done % cfg.checkpoint.every_updates == 0):
        save(done)
    final_records = evaluate(T)
    privacy = _privacy_summary(cfg, run.plan, ledger)
    if run.is_chief:
      _write_json(workdir / PRIVACY_FILE, privacy)
      release.write_release(
          workdir, config=cfg.to_dict(), privacy=privacy,
          params={name: distributed.to_host(
              run.state.params if name == "last" else run.state.averages[name])
                  for name in ["last", *run.state.averages]})
  finally:
    bar.close()
    if writer is not None:
      writer.close()
    checkpointer.close()
  if run.is_chief:
    report.write_report(workdir)
  final = {"epsilon": privacy["epsilon"], "delta": privacy["delta"],
           "noise_multiplier": cfg.dp.noise_multiplier, "num_updates": T}
  for record in final_records:
    for key in ("accuracy", "top5", "loss", "brier", "ece"):
      final[f"{record['params']}/{key}"] = record[key]
  return final
