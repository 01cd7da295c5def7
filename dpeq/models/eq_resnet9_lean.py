"""Equivariant-ResNet-9 at the conventional ResNet-9's cost per example.

Rationale. Under DP-SGD on a CPU, accuracy is bought with updates, and
updates with per-example gradients per second (the Fashion-MNIST ablation,
experiments/results/fashion_mnist_ablation.md, and dpeq.models.eq_tramer_cnn
found the same). Hölzl et al.'s width rule gives a regular-to-regular layer
1.5 times the conventional layer's parameters, so its feature maps are
sqrt(1.5 |G|) times as wide as the conventional network's: Eq-ResNet-9 C4 at
layout (16, 32, 64) has 36 -> 76 channels where ResNet-9 has 16 -> 32, costs
~3x more per update on a CPU and got half the updates (180 in 90 min against
360 in 55; CIFAR-10, eps 3: 50.2% against ResNet-9's 63.7%,
experiments/results/cifar10.md). This design keeps ResNet-9's channels
instead: `channels` = (c1, c2, c3) are the numbers of channels, carried as
c / |G| regular fields, so every convolution costs what ResNet-9's costs
while the kernel constraint divides its parameters by |G| (the sparser model
under the same compute).

Two departures from the paper's blocks, chosen on CIFAR-10's validation
split (eps 3, 40 updates of expected batch 512, the same CPU time per arm;
experiments/results/cifar10.md, Sweep), where the D1 model went from 37.9%
(learning rate 4) to 42.7%:
  - no group pooling before the head (`group_pool=False`): the head sees the
    c3 channels, as ResNet-9's does (40.1%; pooling to c3 / |G| invariants
    throws away the orientation of the last features);
  - scaled weight standardization (`weight_standardization="scaled"`,
    dpeq.nn.R2Conv): unit-norm filters per output field, as ResNet-9's
    WSConv2D, instead of the paper's one mean and std over the whole layer,
    whose outputs grow with the square root of the fan-in (42.7%).
Also measured there: with the paper's blocks C4 24.0% and D4 15.4%, but
C4 with these defaults 41.2% (36,550 parameters; the departures matter
most for the larger group); the last stage without the constraint
(restrict="invariant", 160,770 parameters) 40.4% with the paper's blocks and
41.7% with these; learning rates 2, 6 and 8 below 4. ResNet-9 (16, 32, 64)
reached 47.2% in the same sweep (learning rate 4; 45.6% at 6): at this
length the constraint does not yet pay.

Final run (train_valid -> test, eps 3, 360 updates of expected batch 1024,
learning rate 4, 32 min on the idle 2-core CPU): D1 65.9% (EMA), against the
conventional ResNet-9 (16, 32, 64) at 67.2% in the same time and updates
(one seed each).

Structure: dpeq.models.eq_resnet9 (the same blocks, norms, nonlinearities
and restriction) with fields (c1 / |G|, c2 / |G|, c3 / |H|), H the last
stage's group (G for restrict="none").

Parameters for 10 classes, 32x32x3 inputs, channels (16, 32, 64), the
defaults: D1 70,530 (ResNet-9 (16, 32, 64): 155,802); C4 36,550; D4 19,560
(with group pooling: 69,250, 34,630 and 17,320;
tests/models/test_models_param_counts.py derives them).
"""

from dpeq.models import eq_common, layers
from dpeq.models.eq_resnet9 import EqResNet9
from dpeq.models.resnet9 import check_layout

DEFAULT_CHANNELS = (16, 32, 64)


def lean_fields(group_name: str, channels: tuple[int, int, int],
                restrict: str, *, model: str) -> tuple[int, int, int]:
  """Fields (n1, n2, n3) carrying `channels` as regular fields.

  Raises ValueError (naming what to change) if the group is not finite or a
  channel count is not a multiple of its group's order.
  """
  group = eq_common.get_group(group_name, model=model)
  if not group.is_finite:
    raise ValueError(
        f"{model}: needs a finite group (C_N or D_N) for regular fields, got "
        f"{group.name}; use eq_resnet9 for SO2 / O2.")
  c1, c2, c3 = check_layout(channels, model=model)
  subgroup = eq_common.restriction(group, restrict, c3, model=model).subgroup
  last = group if subgroup is None else group.subgroup(subgroup)
  fields = []
  for count, order, where in ((c1, group.order, "c1"), (c2, group.order, "c2"),
                              (c3, last.order, "c3")):
    if count % order:
      raise ValueError(
          f"{model}: channels {where}={count} is not a multiple of the order "
          f"{order} of its group; pick channels divisible by {order}.")
    fields.append(count // order)
  return tuple(fields)


def eq_resnet9_lean(
    *,
    num_classes: int,
    group: str = "D1",
    channels: tuple[int, int, int] = DEFAULT_CHANNELS,
    restrict: str = "none",
    group_pool: bool = False,
    weight_standardization: str = "scaled",
    input_padding: int = 0,
):
  """Equivariant-ResNet-9 with ResNet-9's channels (`group` finite).

  `group_pool=False` (default): the head sees the last stage's c3 channels
  (regular fields, as ResNet-9's head sees its c3 channels); True: c3 / |H|
  invariants (the features, not only their group-pooled summary, are then
  invariant).
  `weight_standardization`: "layer" (the paper's) or "scaled" (per output
  field, unit-norm filters; see dpeq.nn.R2Conv).
  `input_padding`: zeros added on each side of the images first. The three
  2x2 pools keep the grid's symmetry only when the padded height and width
  are multiples of 8 (a ValueError otherwise): 2 for 28x28 Fashion-MNIST.
  """
  if weight_standardization not in ("layer", "scaled"):
    raise ValueError(
        "eq_resnet9_lean: weight_standardization must be 'layer' or "
        f"'scaled', got {weight_standardization!r}.")
  fields = lean_fields(group, channels, restrict, model="eq_resnet9_lean")
  channels = tuple(channels)

  input_padding = layers.check_padding(input_padding, model="eq_resnet9_lean")

  def forward(images, is_training=False):
    layers.check_images(images, model="eq_resnet9_lean")
    height, width = (size + 2 * input_padding for size in images.shape[1:3])
    if height % 8 or width % 8:
      raise ValueError(
          f"eq_resnet9_lean: images of {images.shape[1]}x{images.shape[2]} "
          f"padded by {input_padding} give {height}x{width}, not multiples "
          "of 8, so the three 2x2 pools would break the equivariance; set "
          "input_padding so that (size + 2 * input_padding) % 8 == 0 (2 for "
          "28x28).")
    images = layers.pad_images(images, input_padding)
    return EqResNet9(
        num_classes=num_classes, group=group, layout=channels,
        restrict=restrict, fields=fields, group_pool=bool(group_pool),
        weight_standardization=weight_standardization,
        name="eq_res_net9_lean",
    )(images, is_training)

  return forward

