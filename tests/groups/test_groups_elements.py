"""Group elements, composition, the action on the plane and group names."""

import math

import numpy as np
import pytest

from dpeq.groups import GroupElement, get_group

FINITE = ["C1", "C2", "C3", "C4", "C8", "C16", "D1", "D2", "D3", "D4", "D8", "D16"]


def _random_elements(group, rng, count=6):
  if group.is_finite:
    elements = group.elements()
    return [elements[i] for i in rng.integers(len(elements), size=count)]
  flips = rng.integers(2, size=count) if group.has_flips else np.zeros(count, int)
  return [group.element(t, int(f)) for t, f in zip(rng.uniform(-7, 7, count), flips,
                                                  strict=True)]


def test_mirror_is_a_horizontal_image_flip():
  flip = GroupElement(0.0, 1)
  np.testing.assert_allclose(flip.act(np.array([1.0, 2.0])), [-1.0, 2.0])
  quarter = GroupElement(math.pi / 2, 0)  # Counter-clockwise in (x, y).
  np.testing.assert_allclose(quarter.act(np.array([1.0, 0.0])), [0.0, 1.0], atol=1e-15)
  # R(t) F^f: the mirror is applied first.
  np.testing.assert_allclose(
      GroupElement(math.pi / 2, 1).act(np.array([1.0, 0.0])), [0.0, -1.0], atol=1e-15
  )


@pytest.mark.parametrize("name", FINITE + ["SO2", "O2"])
def test_composition_is_the_product_of_plane_maps(name):
  group = get_group(name)
  rng = np.random.default_rng(0)
  pairs = zip(_random_elements(group, rng), _random_elements(group, rng), strict=True)
  for a, b in pairs:
    ab = group.compose(a, b)
    assert group.contains(ab)
    np.testing.assert_allclose(ab.matrix(), a.matrix() @ b.matrix(), atol=1e-12)
    identity = group.compose(a, group.inverse(a))
    np.testing.assert_allclose(identity.matrix(), np.eye(2), atol=1e-12)
    if group.is_finite:  # Snapped to the group: equality is exact.
      assert identity == group.identity
      ab_a = group.compose(group.compose(a, b), a)
      assert ab_a == group.compose(a, group.compose(b, a))


@pytest.mark.parametrize("name", FINITE)
def test_elements_order_and_closure(name):
  group = get_group(name)
  n = group.rotation_order
  elements = group.elements()
  assert len(elements) == group.order == n * (2 if group.has_flips else 1)
  assert len(set(elements)) == len(elements)
  for k, element in enumerate(elements):  # escnn order: rotations, then flipped.
    assert element.flip == (k >= n)
    assert math.isclose(element.rotation, 2 * math.pi * (k % n) / n, abs_tol=1e-12)
    assert group.index(element) == k
  closed = {group.compose(a, b) for a in elements for b in elements}
  assert closed == set(elements)


def test_element_validation():
  with pytest.raises(ValueError, match="flip"):
    GroupElement(0.0, 2)
  with pytest.raises(ValueError, match="finite"):
    GroupElement(float("nan"), 0)
  assert GroupElement(-math.pi / 2).rotation == pytest.approx(1.5 * math.pi)
  c4 = get_group("C4")
  with pytest.raises(ValueError, match="not an element of C4"):
    c4.element(math.pi / 4)
  with pytest.raises(ValueError, match="not an element of C4"):
    c4.element(0.0, 1)
  with pytest.raises(ValueError, match="not an element of SO2"):
    get_group("SO2").element(0.3, 1)
  with pytest.raises(ValueError, match="infinite"):
    get_group("SO2").elements()
  assert get_group("D4").element(5 * math.pi / 2, 1) == GroupElement(math.pi / 2, 1)


@pytest.mark.parametrize(
    "name, count", [("C1", 1), ("C3", 1), ("C8", 4), ("D8", 8), ("D1", 2),
                    ("D2", 4), ("SO2", 4), ("O2", 8)]
)
def test_grid_preserving_elements_map_the_grid_to_itself(name, count):
  group = get_group(name)
  elements = group.grid_preserving_elements()
  assert len(elements) == count
  coords = np.stack(np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)), -1).reshape(-1, 2)
  grid = {tuple(p) for p in coords}
  for element in elements:
    moved = element.act(coords.astype(float))
    np.testing.assert_allclose(moved, np.round(moved), atol=1e-12)
    assert {tuple(p) for p in np.round(moved).astype(int)} == grid


def test_group_names_and_attributes():
  assert get_group("C4") is get_group("C4")
  assert get_group("C4", max_frequency=5) == get_group("C4")
  so2 = get_group("SO2", max_frequency=2)
  assert not so2.is_finite and so2.order is None and not so2.has_flips
  assert get_group("O2").has_flips and get_group("D1").order == 2
  for bad in ["C0", "c4", "SO3", "D", "C4 ", "Z2", 4]:
    with pytest.raises(ValueError, match="C<N>"):
      get_group(bad)
  with pytest.raises(ValueError, match="max_frequency"):
    get_group("SO2", max_frequency=-1)
