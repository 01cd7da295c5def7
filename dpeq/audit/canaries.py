"""Canaries for auditing DP-SGD: what is inserted, and how it is scored.

Two kinds, both inserted as ordinary training examples so that the engine
under audit (sampling, clipping, noise, optimizer) treats them exactly like
data:

  gradient  a "Dirac" canary (Nasr et al. 2023; Steinke et al. 2023): an
            example whose loss is `magnitude * theta[j]`, so its gradient is
            `magnitude * e_j` on one parameter coordinate j of its own. With
            magnitude >> C a correct engine clips it to C e_j; an engine that
            does not clip lets it through whole. The strongest known canary
            for DP-SGD: it needs white-box access to the parameters.
  input     a real-looking example (a random image with a random label),
            scored by how much better the trained model fits it than the
            initial one: what a black-box attacker sees.

Scores are "higher = more likely included". Gradient canaries have two
score families, used with half the significance each (Bonferroni):
  displacement  theta_0[j] - theta_T[j]: the canary's coordinate moves
                against its gradient whenever it is sampled;
  spread        sum_t (d_t[j] - median_s d_s[j])^2 with d_t the update of
                step t: an engine that reuses one noise draw makes every d_t
                alike except when the canary is sampled.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

# Batch field that marks canary rows: the canary's index, or -1 for data.
CANARY_FIELD = "canary"
NOT_A_CANARY = -1


@dataclasses.dataclass(frozen=True)
class CanarySet:
  """m canaries and which of them were inserted.

  Attributes:
    kind: "gradient" or "input".
    included: bool [m]: the independent fair coin flips (True: inserted).
    coordinates: int [m] distinct flat parameter indices (gradient kind).
    magnitude: the raw gradient norm of a gradient canary (>> clip norm).
    images / labels: the input canaries (input kind): float32 [m, H, W, C]
      in the model's input units, and int32 [m].
  """

  kind: str
  included: np.ndarray
  coordinates: np.ndarray | None = None
  magnitude: float = 0.0
  images: np.ndarray | None = None
  labels: np.ndarray | None = None

  @property
  def num_canaries(self) -> int:
    return int(self.included.shape[0])

  @property
  def num_included(self) -> int:
    return int(np.sum(self.included))


def _coin_flips(rng: np.random.Generator, num_canaries: int) -> np.ndarray:
  if not isinstance(num_canaries, int) or num_canaries < 2:
    raise ValueError(
        f"num_canaries must be an int >= 2 (half are expected to be held "
        f"out), got {num_canaries!r}.")
  return rng.random(num_canaries) < 0.5


def gradient_canaries(*, num_canaries: int, num_params: int, magnitude: float,
                      rng: np.random.Generator,
                      candidates: np.ndarray | None = None) -> CanarySet:
  """Dirac canaries on `num_canaries` distinct random coordinates.

  Args:
    num_canaries: m.
    num_params: the model's number of parameters (flat coordinates).
    magnitude: each canary's raw gradient norm; take it >> the clip norm so
      that an engine that does not clip is caught.
    rng: draws the coordinates and the coin flips.
    candidates: flat coordinates to draw from (default: all). Coordinates
      that the data's gradients barely move (e.g. `quiet_coordinates`) make
      the audit stronger: data gradients are noise to the canary's score.
  """
  pool = (np.arange(num_params) if candidates is None
          else np.unique(np.asarray(candidates, np.int64)))
  if pool.size and (pool[0] < 0 or pool[-1] >= num_params):
    raise ValueError(
        f"candidates must be flat coordinates in [0, {num_params}).")
  if num_canaries > pool.size:
    raise ValueError(
        f"{num_canaries} gradient canaries need as many distinct parameter "
        f"coordinates, but there are {pool.size} candidates: use fewer "
        "canaries.")
  if not magnitude > 0:
    raise ValueError(f"magnitude must be > 0, got {magnitude!r}.")
  coordinates = rng.choice(pool, size=num_canaries, replace=False)
  return CanarySet(kind="gradient", included=_coin_flips(rng, num_canaries),
                   coordinates=coordinates.astype(np.int64),
                   magnitude=float(magnitude))


def input_canaries(*, num_canaries: int, image_shape: tuple[int, ...],
                   num_classes: int, rng: np.random.Generator,
                   mean: float | np.ndarray = 0.0,
                   std: float | np.ndarray = 1.0) -> CanarySet:
  """Uniform-noise images in [0, 1], standardised by (mean, std) like the
  data, with uniformly random labels."""
  pixels = rng.random(size=(num_canaries, *image_shape))
  images = ((pixels - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=num_canaries).astype(np.int32)
  return CanarySet(kind="input", included=_coin_flips(rng, num_canaries),
                   images=images, labels=labels)


def quiet_coordinates(mean_abs_grad: np.ndarray, count: int) -> np.ndarray:
  """The `count` flat coordinates with the smallest mean |data gradient|."""
  order = np.argsort(np.asarray(mean_abs_grad).reshape(-1), kind="stable")
  return order[:count]


def with_gradient_canaries(loss_fn, canaries: CanarySet):
  """`loss_fn` where canary rows have the loss magnitude * theta[j_canary].

  `views[CANARY_FIELD]` (int [K]) holds the canary index or NOT_A_CANARY;
  a canary's loss per view is linear in one coordinate, so its gradient is
  magnitude * e_j whatever the views. Data rows keep `loss_fn`.
  """
  coordinates = jnp.asarray(canaries.coordinates, jnp.int32)
  magnitude = canaries.magnitude

  def wrapped(params, views):
    losses, aux = loss_fn(params, {k: v for k, v in views.items()
                                   if k != CANARY_FIELD})
    index = views[CANARY_FIELD]
    flat, _ = ravel_pytree(params)
    canary_loss = magnitude * flat[coordinates[jnp.maximum(index, 0)]]
    is_canary = index >= 0
    # jnp.where passes the unselected branch a zero cotangent.
    return jnp.where(is_canary, canary_loss, losses), aux

  return wrapped


def flat_coordinates(params, coordinates: np.ndarray) -> np.ndarray:
  """The values of `params` at flat `coordinates` (float64 [m])."""
  flat, _ = ravel_pytree(params)
  return np.asarray(jax.device_get(flat[jnp.asarray(coordinates)]), np.float64)


def displacement_scores(trajectory: np.ndarray) -> np.ndarray:
  """theta_0 - theta_T per canary; trajectory [T + 1, m]."""
  trajectory = np.asarray(trajectory, np.float64)
  return trajectory[0] - trajectory[-1]


def spread_scores(trajectory: np.ndarray) -> np.ndarray:
  """sum_t (d_t - median_s d_s)^2 per canary, d_t = theta_{t+1} - theta_t."""
  steps = np.diff(np.asarray(trajectory, np.float64), axis=0)
  return np.sum(np.square(steps - np.median(steps, axis=0)), axis=0)
