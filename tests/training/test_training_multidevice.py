"""The private update sharded over 8 simulated CPU devices equals 1 device."""

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent('''
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from dpeq.privacy.plan import PrivacyPlan
    from dpeq.training import update

    assert len(jax.devices()) == 8, jax.devices()

    def net(images):
      x = jax.nn.relu(hk.Conv2D(3, 3, stride=2)(images))
      return hk.Linear(3)(jnp.mean(x, axis=(-3, -2)))

    model = hk.without_apply_rng(hk.transform(net))

    def loss_fn(params, views):
      logits = model.apply(params, views["images"])
      losses = optax.softmax_cross_entropy_with_integer_labels(
          logits, views["labels"])
      return losses, {"loss": jnp.mean(losses)}

    def views_fn(key, batch):  # K = 2 views, the second with random noise.
      images = batch["images"]
      noisy = images + 0.3 * jax.random.normal(key, images.shape)
      return {"images": jnp.stack([images, noisy], axis=1),
              "labels": jnp.repeat(batch["labels"][:, None], 2, axis=1)}

    plan = PrivacyPlan(l2_clip_norm=0.5, noise_multiplier=1.0,
                       expected_batch_size=14, num_updates=1)
    private = update.make_private_update(
        loss_fn=loss_fn, optimizer=optax.sgd(0.5, momentum=0.9),
        plan=plan, ema_decays=(0.9,), views_fn=views_fn)
    rng = np.random.default_rng(0)
    params = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))
    batch = {"images": jnp.asarray(rng.normal(size=(16, 6, 6, 2))
                                   * rng.uniform(0.1, 3, (16, 1, 1, 1)),
                                   jnp.float32),
             "labels": jnp.asarray(rng.integers(0, 3, 16), jnp.int32)}
    mask = jnp.asarray(np.arange(16) % 5 != 4)  # Padding on several devices.
    key = jax.random.key(7)

    def step(state, batch, mask, key):
      clipped = jax.jit(private.clipped_grads)(state.params, batch, mask,
                                               key=key)
      new_state, metrics = jax.jit(private.apply)(state, clipped.totals())
      return clipped, new_state, metrics

    state = private.init(params, key=jax.random.key(1))
    single = step(state, batch, mask, key)

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("batch"))
    multi = step(jax.device_put(state, replicated),
                 jax.device_put(batch, sharded), jax.device_put(mask, sharded),
                 jax.device_put(key, replicated))

    clipped = multi[0]
    assert len(clipped.per_example_norms.sharding.device_set) == 8
    # Every example was clipped: summing gradients across devices before
    # clipping would change the result.
    assert int(single[0].num_clipped) == int(mask.sum())
    np.testing.assert_allclose(clipped.per_example_norms,
                               single[0].per_example_norms, rtol=1e-5)
    pairs = [(single[0].grad_sum, clipped.grad_sum),
             (single[1].params, multi[1].params),
             (single[1].opt_state, multi[1].opt_state),
             (single[1].averages, multi[1].averages),
             (single[2], multi[2])]
    for one, eight in pairs:
      for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight),
                      strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                   atol=1e-7)
    # The update moved the params (noise and signal), identically.
    moved = optax.tree.norm(jax.tree.map(jnp.subtract, multi[1].params, params))
    assert float(moved) > 0
    print("OK")
''')


@pytest.mark.slow
def test_private_update_on_8_devices_equals_1_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-c", _SCRIPT], env=env,
                          capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.strip().endswith("OK")
