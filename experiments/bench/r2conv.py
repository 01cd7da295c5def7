"""Benchmark: R2Conv vs a plain convolution with the same kernel shape.

  python -m experiments.bench.r2conv [--batch_size 64 --size 32 --repeats 10
      --layers d4_conv2,d4_res --json out.json]

For each layer (Equivariant-ResNet-9 sizes, layout (16, 32, 64)), on the
default JAX backend, float32, jitted, input [B, size, size, C_in]:
  plain_fwd     lax.conv_general_dilated with a [3, 3, C_in, C_out] kernel
                (a parameter) + a bias;
  r2conv_fwd    R2Conv: kernel expansion (one einsum per pair of field
                representations, the basis a constant) + the same convolution
                + bias on the trivial components;
  plain_fwd_bwd, r2conv_fwd_bwd
                gradient of sum(y^2) w.r.t. the parameters (kernel and bias,
                or coefficients and bias);
and the ratios r2conv / plain (target: forward <= 1.2). Also the time to build
the layer's numpy plan (bases from dpeq.kernels, cached): cold (first build
in this process) and warm. Times are medians over `--repeats` runs after one
warm-up (compile) run, the two variants timed alternately.
"""

import argparse
import json
import statistics
import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpeq import groups
from dpeq.nn import FieldType, R2Conv
from dpeq.nn import conv as conv_lib

# name -> (group, in fields, out fields, kind): D4/C8 n_l = int(c sqrt(12) / 8)
# = 6, 13, 27 fields; SO(2) n_l = int(c sqrt(1.5) / 9) = 2, 4, 8 fields of 7.
LAYERS = {
    "d4_conv2": ("D4", 6, 13, "regular"),  # 48 -> 104 channels.
    "d4_res": ("D4", 13, 13, "regular"),  # 104 -> 104 channels.
    "c8_res": ("C8", 13, 13, "regular"),
    "so2_res": ("SO2", 4, 4, "irreps"),  # 28 -> 28 channels.
}


def _paired_median_seconds(fn_a, fn_b, repeats: int) -> tuple[float, float]:
  """Median seconds of fn_a and fn_b, timed alternately (fairer under load)."""
  jax.block_until_ready(fn_a())  # Warm-up: compile.
  jax.block_until_ready(fn_b())
  times_a, times_b = [], []
  for _ in range(repeats):
    for fn, times in ((fn_a, times_a), (fn_b, times_b)):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - start)
  return statistics.median(times_a), statistics.median(times_b)


def _field_types(name):
  group_name, fields_in, fields_out, kind = LAYERS[name]
  group = groups.get_group(group_name)
  make = FieldType.regular if kind == "regular" else FieldType.irreps
  return make(group, fields_in), make(group, fields_out)


def bench_layer(name: str, *, batch_size: int, size: int, repeats: int) -> dict:
  in_type, out_type = _field_types(name)
  start = time.perf_counter()
  conv_lib._plan(in_type, out_type, 3)  # pylint: disable=protected-access
  cold = time.perf_counter() - start
  start = time.perf_counter()
  conv_lib._plan(in_type, out_type, 3)  # pylint: disable=protected-access
  warm = time.perf_counter() - start

  model = hk.without_apply_rng(hk.transform(lambda x: R2Conv(in_type, out_type)(x)))
  x = jnp.asarray(
      np.random.default_rng(0).standard_normal(
          (batch_size, size, size, in_type.size)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x)
  plain_params = {
      "kernel": jnp.asarray(np.random.default_rng(1).standard_normal(
          (3, 3, in_type.size, out_type.size)) * 0.05, jnp.float32),
      "bias": jnp.zeros((out_type.size,), jnp.float32),
  }

  def plain(p, inputs):
    y = lax.conv_general_dilated(
        inputs, p["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["bias"]

  loss = lambda apply: (lambda p, inputs: jnp.sum(jnp.square(apply(p, inputs))))
  plain_fwd = jax.jit(plain)
  r2_fwd = jax.jit(model.apply)
  plain_bwd = jax.jit(jax.grad(loss(plain)))
  r2_bwd = jax.jit(jax.grad(loss(model.apply)))
  plain_fwd_s, r2conv_fwd_s = _paired_median_seconds(
      lambda: plain_fwd(plain_params, x), lambda: r2_fwd(params, x), repeats)
  plain_fwd_bwd_s, r2conv_fwd_bwd_s = _paired_median_seconds(
      lambda: plain_bwd(plain_params, x), lambda: r2_bwd(params, x), repeats)
  result = {
      "layer": name,
      "channels": [in_type.size, out_type.size],
      "num_coefficients": sum(
          v.size for k, v in params["r2_conv"].items() if k != "bias"),
      "plan_cold_s": cold,
      "plan_warm_s": warm,
      "plain_fwd_s": plain_fwd_s,
      "r2conv_fwd_s": r2conv_fwd_s,
      "plain_fwd_bwd_s": plain_fwd_bwd_s,
      "r2conv_fwd_bwd_s": r2conv_fwd_bwd_s,
  }
  result["fwd_ratio"] = result["r2conv_fwd_s"] / result["plain_fwd_s"]
  result["fwd_bwd_ratio"] = result["r2conv_fwd_bwd_s"] / result["plain_fwd_bwd_s"]
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--layers", default="d4_conv2,d4_res,c8_res,so2_res",
                      help=f"comma-separated, from {sorted(LAYERS)}")
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args()
  names = [name for name in args.layers.split(",") if name]
  unknown = sorted(set(names) - set(LAYERS))
  if unknown:
    raise SystemExit(f"unknown layers {unknown}; choose from {sorted(LAYERS)}")
  print(f"backend={jax.default_backend()} batch={args.batch_size} "
        f"size={args.size} repeats={args.repeats}")
  results = []
  for name in names:
    result = bench_layer(
        name, batch_size=args.batch_size, size=args.size, repeats=args.repeats)
    results.append(result)
    print(
        f"{name:9s} {result['channels'][0]:4d}->{result['channels'][1]:<4d} "
        f"plan cold {result['plan_cold_s'] * 1e3:7.1f} ms warm "
        f"{result['plan_warm_s'] * 1e6:5.1f} us | fwd plain "
        f"{result['plain_fwd_s'] * 1e3:8.2f} ms r2conv "
        f"{result['r2conv_fwd_s'] * 1e3:8.2f} ms ratio {result['fwd_ratio']:.3f} | "
        f"fwd+bwd plain {result['plain_fwd_bwd_s'] * 1e3:8.2f} ms r2conv "
        f"{result['r2conv_fwd_bwd_s'] * 1e3:8.2f} ms ratio "
        f"{result['fwd_bwd_ratio']:.3f}"
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
