"""The empirical audit catches broken DP-SGD engines and clears the real one.

A tiny MLP on 8x8 inputs whose border pixels are zero: the first layer's
weights on the border get no data gradient, so the Dirac canaries placed there
(canaries.quiet_coordinates would pick them) see only noise and themselves.
Every run is seeded, so each assertion is deterministic; the margins are wide
(theoretical epsilon 1; broken engines audit at 3 to 4, the real one below
0.2 in these seeds).
"""

import dataclasses
import importlib.util
import json
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from dpeq import audit
from dpeq.audit import canaries as canaries_lib
from dpeq.privacy import accounting
from dpeq.privacy.plan import PrivacyPlan
from dpeq.training import update as update_lib

NUM_REAL, NUM_UPDATES, BATCH, EPSILON, DELTA = 1000, 60, 200, 1.0, 1e-5


def _problem(seed):
  rng = np.random.default_rng(seed)
  images = np.zeros((NUM_REAL, 8, 8, 1), np.float32)
  images[:, 2:6, 2:6] = rng.normal(size=(NUM_REAL, 4, 4, 1))
  teacher = rng.normal(size=(64, 3))
  labels = np.argmax(images.reshape(NUM_REAL, -1) @ teacher, 1).astype(np.int32)

  def forward(x):
    hidden = jnp.tanh(hk.Linear(32, name="hidden")(x.reshape(x.shape[0], -1)))
    return hk.Linear(3, name="classifier")(hidden)

  model = hk.without_apply_rng(hk.transform(forward))
  params = model.init(jax.random.key(0), images[:1])
  return rng, images, labels, model, params


def _mean_abs_data_grad(model, params, images, labels):
  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, x[None]), y[None])[0]
  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(
      params, images[:256], labels[:256])
  flat = jax.vmap(lambda g: ravel_pytree(g)[0])(grads)
  return np.asarray(jnp.mean(jnp.abs(flat), axis=0))


def _no_clipping(**kwargs):
  plan = kwargs["plan"]
  # Clip at 1e9 with the noise std of the claimed plan: nothing is clipped.
  return update_lib.make_private_update(**{**kwargs, "plan": dataclasses.replace(
      plan, l2_clip_norm=1e9,
      noise_multiplier=plan.noise_multiplier * plan.l2_clip_norm / 1e9)})


def _noise_divided_by_10(**kwargs):
  plan = kwargs["plan"]
  return update_lib.make_private_update(**{**kwargs, "plan": dataclasses.replace(
      plan, noise_multiplier=plan.noise_multiplier / 10)})


def _noise_reused(**kwargs):
  engine = update_lib.make_private_update(**kwargs)

  def apply(state, clipped):
    frozen = state.privatizer_state._replace(
        update_step=jnp.zeros_like(state.privatizer_state.update_step))
    return engine.apply(dataclasses.replace(state, privatizer_state=frozen),
                        clipped)

  def update(state, batch, mask, *, key):
    return apply(state, engine.clipped_grads(state.params, batch, mask,
                                             key=key).totals())

  return dataclasses.replace(engine, apply=apply, update=update)


ENGINES = {"real": update_lib.make_private_update, "no_clipping": _no_clipping,
           "noise_divided_by_10": _noise_divided_by_10,
           "noise_reused": _noise_reused}


def _audit(engine, seed, *, kind="gradient", num_canaries=600):
  rng, images, labels, model, params = _problem(seed)
  num_params = ravel_pytree(params)[0].size
  if kind == "gradient":
    quiet = canaries_lib.quiet_coordinates(
        _mean_abs_data_grad(model, params, images, labels), num_canaries)
    canaries = audit.gradient_canaries(
        num_canaries=num_canaries, num_params=num_params, magnitude=1e3,
        rng=rng, candidates=quiet)
  else:
    canaries = audit.input_canaries(
        num_canaries=num_canaries, image_shape=(8, 8, 1), num_classes=3,
        rng=rng)
  num_examples = NUM_REAL + canaries.num_included
  sigma = accounting.calibrate_noise_multiplier(
      target_epsilon=EPSILON, sampling_rate=BATCH / num_examples,
      steps=NUM_UPDATES, delta=DELTA)
  plan = PrivacyPlan(l2_clip_norm=1.0, noise_multiplier=sigma,
                     expected_batch_size=BATCH, num_updates=NUM_UPDATES,
                     delta=DELTA)
  return audit.audit(apply_fn=model.apply, params=params, images=images,
                     labels=labels, canaries=canaries, plan=plan,
                     optimizer=optax.sgd(1.0), micro_batch_size=100,
                     seed=seed, make_engine=ENGINES[engine])


def test_quiet_coordinates_are_those_the_data_does_not_move():
  _, images, labels, model, params = _problem(0)
  grads = _mean_abs_data_grad(model, params, images, labels)
  quiet = canaries_lib.quiet_coordinates(grads, 600)
  assert np.all(grads[quiet] == 0)  # weights on the zero border
  assert np.sum(grads == 0) >= 48 * 32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_real_engine_is_not_caught(seed):
  result = _audit("real", seed)
  assert result.theoretical_epsilon == pytest.approx(EPSILON, abs=1e-3)
  assert result.num_included + (600 - result.num_included) == 600
  assert not result.violated, result
  assert result.epsilon_one_run < 0.5 * EPSILON


@pytest.mark.parametrize("engine", ["no_clipping", "noise_divided_by_10",
                                    "noise_reused"])
@pytest.mark.parametrize("seed", [0, 1])
def test_broken_engines_are_caught(engine, seed):
  result = _audit(engine, seed)
  assert result.violated, result
  assert result.epsilon_one_run > 2 * result.theoretical_epsilon, result


def test_input_canaries_audit_the_real_engine_below_its_epsilon():
  result = _audit("real", 0, kind="input", num_canaries=200)
  assert set(result.by_score) == {"loss_drop"}
  assert not result.violated
  record = json.loads(json.dumps(result.to_json()))
  assert record["kind"] == "input" and record["violated"] is False


def test_a_canary_row_has_the_dirac_gradient_and_data_rows_keep_theirs():
  rng, images, labels, model, params = _problem(0)
  num_params = ravel_pytree(params)[0].size
  canaries = audit.gradient_canaries(num_canaries=4, num_params=num_params,
                                     magnitude=50.0, rng=rng)

  def base(p, views):
    return optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, views["images"]), views["labels"]), {}

  wrapped = canaries_lib.with_gradient_canaries(base, canaries)
  def grad_of(loss_fn, row):
    views = {"images": images[:1], "labels": labels[:1],
             canaries_lib.CANARY_FIELD: np.array([row], np.int32)}
    g = jax.grad(lambda p: jnp.sum(loss_fn(p, views)[0]))(params)
    return np.asarray(ravel_pytree(g)[0])

  expected = np.zeros(num_params)
  expected[canaries.coordinates[2]] = 50.0
  np.testing.assert_allclose(grad_of(wrapped, 2), expected)
  data_views = lambda p, v: base(p, {k: v[k] for k in ("images", "labels")})
  np.testing.assert_allclose(grad_of(wrapped, canaries_lib.NOT_A_CANARY),
                             grad_of(data_views, 0), rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_canaries=1), "num_canaries must be an int >= 2"),
    (dict(num_canaries=20, candidates=np.arange(5)), "5 candidates"),
    (dict(num_canaries=4, candidates=np.array([99])), r"in \[0, 10\)"),
    (dict(num_canaries=4, magnitude=0.0), "magnitude must be > 0"),
])
def test_bad_canary_arguments_fail_with_a_message(kwargs, message):
  kwargs = {"magnitude": 1.0, **kwargs}
  with pytest.raises(ValueError, match=message):
    audit.gradient_canaries(num_params=10, rng=np.random.default_rng(0),
                            **kwargs)


def test_the_command_audits_a_config_and_reports_it(fashion_mnist_dir, tmp_path):
  del fashion_mnist_dir  # the tiny config reads the shared files
  from dpeq.audit import __main__ as audit_cli
  spec = importlib.util.spec_from_file_location(
      "helpers_tiny_config",
      pathlib.Path(__file__).parents[1] / "training" / "helpers_tiny_config.py")
  helpers_tiny_config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(helpers_tiny_config)
  config = helpers_tiny_config.get_config("updates=3,subset=512,micro=128")
  results = audit_cli.run(config, workdir=tmp_path, kinds=["gradient"],
                          num_canaries=40, max_examples=256,
                          significance=0.05, seed=0)
  assert [r.kind for r in results] == ["gradient"]
  saved = json.loads((tmp_path / "audit.json").read_text())
  assert saved["num_real_examples"] == 256
  assert [r["kind"] for r in saved["results"]] == ["gradient"]
  for r in saved["results"]:
    assert r["num_updates"] == 3 and r["num_canaries"] == 40
    assert r["theoretical_epsilon"] > 0 and not r["violated"]
  report = (tmp_path / "report.md").read_text()
  assert "## Empirical privacy audit" in report and "| gradient | 40 (" in report
  with pytest.raises(Exception, match="unknown kind"):
    audit_cli.run(config, workdir=tmp_path, kinds=["dirac"], num_canaries=40,
                  max_examples=256, significance=0.05, seed=0)
