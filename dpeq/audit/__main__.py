r"""Audits the privacy of one experiment config empirically.

  python -m dpeq.audit --config=experiments/configs/fashion_mnist.py[:ARGS] \
      --workdir=runs/audit_NAME [--canaries=gradient,input] \
      [--num_canaries=1000] [--max_examples=N] [--config.a.b=v]

Trains the configured model, optimizer, clip norm and noise multiplier
(calibrated to the config's target epsilon for the real training set) with
m canaries of each asked kind, half of them inserted by fair coin flips, and
writes `audit.json` and the "Empirical privacy audit" section of
`report.md` in the workdir: per canary kind the one-run (Steinke et al.)
and Clopper-Pearson lower bounds at 95% confidence beside the accountant's
epsilon of the run as audited. The audit trains on standardised images with
one view and no augmentation (the guarantee does not depend on them) and
its randomness is seeded (`--seed`): an audit is a test, not a private run.
Gradient canaries sit on the m coordinates whose per-example gradients at
initialisation are smallest on average (data gradients only add noise to
their scores).
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax.flatten_util import ravel_pytree
from ml_collections import config_flags

from dpeq import models as models_lib
from dpeq.audit import canaries as canaries_lib
from dpeq.audit import engine_audit
from dpeq.training import config as config_lib
from dpeq.training import metrics, report

AUDIT_FILE = report.AUDIT_FILE
KINDS = ("gradient", "input")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:argument]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where audit.json and "
                               "report.md are written.")
_CANARIES = flags.DEFINE_list("canaries", ["gradient", "input"],
                              f"Canary kinds to audit, of {KINDS}.")
_NUM_CANARIES = flags.DEFINE_integer("num_canaries", 1000,
                                     "Canaries per kind (m).")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", None, "Train on the first N real examples only.")
_SIGNIFICANCE = flags.DEFINE_float("significance", 0.05,
                                   "1 - confidence of the bounds.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of canaries, batches and noise.")
flags.mark_flags_as_required(["config", "workdir"])


def _mean_abs_grad(apply_fn, params, images, labels) -> np.ndarray:
  """Mean |per-example gradient| per flat coordinate at `params`."""
  def loss(p, image, label):
    return metrics.cross_entropy(apply_fn(p, image[None]), label[None])[0]

  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(
      params, jnp.asarray(images), jnp.asarray(labels))
  flat = jax.vmap(lambda g: ravel_pytree(g)[0])(grads)
  return np.asarray(jnp.mean(jnp.abs(flat), axis=0))


def run(config, *, workdir: pathlib.Path, kinds, num_canaries: int,
        max_examples: int | None, significance: float, seed: int) -> list:
  """Audits `config` once per canary kind; returns the AuditResults."""
  from dpeq.training import loop  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(kinds) - set(KINDS))
  if unknown:
    raise config_lib.ConfigError(
        f"--canaries: unknown kind(s) {unknown}; use {', '.join(KINDS)}.")
  config_lib.validate(config)
  train_set, _ = loop.load_data(config)
  count = len(train_set) if max_examples is None else min(
      int(max_examples), len(train_set))
  cfg = config_lib.resolve(config, num_examples=count)
  info = train_set.info
  pixels = np.asarray(train_set.images[:count], np.float32) / 255.0
  images = ((pixels - np.asarray(info.mean, np.float32))
            / np.asarray(info.std, np.float32)).astype(np.float32)
  labels = np.asarray(train_set.labels[:count], np.int32)
  model = models_lib.create(cfg.model.name, num_classes=info.num_classes,
                            **cfg.model.kwargs.to_dict())
  params = model.init(jax.random.key(cfg.seed), jnp.asarray(images[:1]))
  num_params = ravel_pytree(params)[0].size
  # The claimed plan; the audit sets n to the examples it trains on.
  plan = config_lib.privacy_plan(cfg)
  rng = np.random.default_rng(seed)
  results = []
  for kind in kinds:
    if kind == "gradient":
      quiet = canaries_lib.quiet_coordinates(
          _mean_abs_grad(model.apply, params, images[:256], labels[:256]),
          num_canaries)
      canaries = canaries_lib.gradient_canaries(
          num_canaries=num_canaries, num_params=num_params,
          magnitude=1e3 * cfg.dp.l2_clip_norm, rng=rng, candidates=quiet)
    else:
      canaries = canaries_lib.input_canaries(
          num_canaries=num_canaries, image_shape=info.image_shape,
          num_classes=info.num_classes, rng=rng, mean=np.asarray(info.mean),
          std=np.asarray(info.std))
    result = engine_audit.audit(
        apply_fn=model.apply, params=params, images=images, labels=labels,
        canaries=canaries, plan=plan, optimizer=config_lib.make_optimizer(cfg),
        micro_batch_size=cfg.training.micro_batch_size, seed=seed,
        significance=significance)
    print(f"{kind} canaries (m={num_canaries}): empirical epsilon >= "
          f"{result.epsilon_one_run:.3f} (one run), "
          f"{result.epsilon_clopper_pearson:.3f} (Clopper-Pearson) at "
          f"{100 * (1 - significance):g}% confidence; theoretical "
          f"{result.theoretical_epsilon:.3f}", flush=True)
    results.append(result)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / AUDIT_FILE).write_text(json.dumps({
      "config": cfg.to_dict(), "num_real_examples": count, "seed": seed,
      "results": [r.to_json() for r in results]}, indent=1, default=str))
  if not (workdir / "config.json").exists():
    (workdir / "config.json").write_text(
        json.dumps(cfg.to_dict(), indent=1, default=str))
  report.write_report(workdir)
  return results


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    run(_CONFIG.value, workdir=pathlib.Path(_WORKDIR.value),
        kinds=_CANARIES.value, num_canaries=_NUM_CANARIES.value,
        max_examples=_MAX_EXAMPLES.value, significance=_SIGNIFICANCE.value,
        seed=_SEED.value)
  except (config_lib.ConfigError, ValueError) as e:
    print(f"Audit not run: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
