"""Benchmark: building the steerable kernel bases of an Equivariant-ResNet-9.

  python -m experiments.bench.kernel_bases [--groups D4,C8,SO2 --kernel_size 3
      --repeats 3 --json out.json]

A basis depends only on the pair (rho_in, rho_out) of field representations,
not on the number of fields, so an Equivariant-ResNet-9 (Hölzl et al., any
layout such as (16, 32, 64)) needs these pairs per group G with last-stage
subgroup S (D_N -> D_{N/2}, C_N -> C_{N/2}, SO2/O2 -> trivial):
  conv1        trivial (RGB) -> field of G
  conv2..3     field of G -> field of G (also the first residual block)
  conv4        field of G restricted to S -> field of S
  residual     field of S -> field of S
where a field is the regular representation (C_N, D_N) or the spectral
field psi_0 + ... + psi_L (SO2: L = 3; O2 likewise). For each group:
  cold   build every basis with all dpeq.kernels caches cleared (groups
         and representations, cheap, stay cached after the first run);
  warm   the same calls again (cache hits).
Cold times are medians over --repeats (caches cleared before each run).
Target (issue 3): <= 2 s cold for the whole network, ~0 warm.
"""

import argparse
import json
import statistics
import time

from dpeq import kernels
from dpeq.groups import directsum, get_group


def _field(group):
  if group.is_finite:
    return group.regular_representation()
  return directsum(*group.irreps(), name="spectral")


def layer_pairs(group_name: str):
  """(label, group, in_rep, out_rep) for every distinct basis of the network."""
  group = get_group(group_name)
  field = _field(group)
  if group.is_finite:
    sub_name = group_name[0] + str(max(group.rotation_order // 2, 1))
  else:
    sub_name = "trivial"
  restricted = field.restrict(sub_name)
  sub = restricted.group
  sub_field = _field(sub) if sub.order != 1 else sub.trivial_representation()
  return [
      ("conv1", group, group.trivial_representation(), field),
      ("conv2/res1/conv3", group, field, field),
      ("conv4", sub, restricted, sub_field),
      ("res2", sub, sub_field, sub_field),
  ]


def _build_all(group_name: str, kernel_size: int):
  sizes = []
  for label, group, in_rep, out_rep in layer_pairs(group_name):
    basis = kernels.kernel_basis(
        group=group, in_rep=in_rep, out_rep=out_rep, kernel_size=kernel_size
    )
    sizes.append((label, f"{in_rep.name} -> {out_rep.name}", basis.shape))
  return sizes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--groups", default="D4,C8,SO2")
  parser.add_argument("--kernel_size", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  results = {}
  total_cold = 0.0
  for group_name in args.groups.split(","):
    cold = []
    for _ in range(args.repeats):
      kernels.clear_cache()
      start = time.perf_counter()
      sizes = _build_all(group_name, args.kernel_size)
      cold.append(time.perf_counter() - start)
    start = time.perf_counter()
    _build_all(group_name, args.kernel_size)
    warm = time.perf_counter() - start
    results[group_name] = {
        "cold_s": statistics.median(cold),
        "warm_s": warm,
        "bases": [
            {"layer": label, "pair": pair, "shape": list(shape)}
            for label, pair, shape in sizes
        ],
    }
    total_cold += statistics.median(cold)
    print(f"{group_name}: cold {statistics.median(cold):.3f} s, "
          f"warm {warm * 1e3:.3f} ms")
    for label, pair, shape in sizes:
      print(f"  {label:18s} {pair:34s} {shape}")
  print(f"all groups: cold {total_cold:.3f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
