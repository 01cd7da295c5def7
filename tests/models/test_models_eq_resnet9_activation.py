"""Which activation each Equivariant-ResNet-9 block applies (Hölzl et al.):
Mish on regular fields (C_N, D_N), Fourier-ELU on SO(2)'s spectral fields;
the SO(2) model's last stage is restricted to trivial fields, hence Mish."""

import jax
import jax.numpy as jnp
import pytest

from dpeq import models
from dpeq import nn as eqnn
from dpeq.models import eq_common


def _activations(group: str, monkeypatch) -> list[tuple[str, str, object]]:
  """(module kind, fields kind, fn) of every nonlinearity the model builds."""
  calls = []

  def recorder(cls, kind):
    class Recording(cls):
      def __init__(self, field_type, *args, **kwargs):
        fn = kwargs["fn"] if "fn" in kwargs else args[0]
        spectral = bool(field_type.fields_where("is_permutation", False))
        calls.append((kind, "spectral" if spectral else "permutation", fn))
        super().__init__(field_type, *args, **kwargs)
    return Recording

  monkeypatch.setattr(eqnn, "FourierNonlinearity",
                      recorder(eqnn.FourierNonlinearity, "fourier"))
  monkeypatch.setattr(eqnn, "PointwiseNonlinearity",
                      recorder(eqnn.PointwiseNonlinearity, "pointwise"))
  model = models.create("eq_resnet9", num_classes=10, group=group,
                        layout=(8, 16, 16))
  jax.eval_shape(lambda: model.init(jax.random.key(1),
                                    jnp.zeros((1, 32, 32, 3))))
  return calls


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_regular_fields_use_pointwise_mish(group, monkeypatch):
  calls = _activations(group, monkeypatch)
  assert len(calls) == 8  # conv1..4 and the two residual blocks' two convs
  assert {(kind, fields) for kind, fields, _ in calls} == {
      ("pointwise", "permutation")}
  assert all(fn is jax.nn.mish for _, _, fn in calls)


def test_so2_spectral_fields_use_fourier_elu(monkeypatch):
  calls = _activations("SO2", monkeypatch)
  assert len(calls) == 8
  spectral = [c for c in calls if c[1] == "spectral"]
  # conv1, conv2, res1 (2) and conv3 act on spectral fields; after the
  # restriction to the trivial subgroup, conv4 and res2 act on scalars.
  assert len(spectral) == 5
  assert all(kind == "fourier" and fn is jax.nn.elu
             for kind, _, fn in spectral), spectral
  assert all(kind == "pointwise" and fn is jax.nn.mish
             for kind, fields, fn in calls if fields == "permutation")


def test_paper_activation_by_field_kind():
  d4, so2 = eqnn.FieldType.regular("D4", 2), eqnn.FieldType.irreps("SO2", 2)
  assert eq_common.paper_activation(d4) is jax.nn.mish
  assert eq_common.paper_activation(so2) is jax.nn.elu
