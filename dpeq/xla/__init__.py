"""dpeq.xla: backend-specific speed paths, chosen by the runner.

Nothing here changes a result beyond float rounding, and nothing here is part
of the guarantee (dpeq.privacy is): each path is a GradientStrategy or a
function transformation with the same values and derivatives as the plain
one, pinned to the jax versions it was tested with, with a plain-vmap
fallback everywhere else.

  conv_weight_grads  per-example conv weight gradients as per-tap batched
                     dots (XLA:CPU runs vmapped conv weight gradients as
                     grouped convolutions, 2-3x slower); a jaxpr rewrite
                     over jax internals, hence the version pin.
"""

from dpeq.xla import conv_weight_grads

__all__ = ["conv_weight_grads"]
