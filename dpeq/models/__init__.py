"""dpeq.models: the networks of De et al. 2022 and Hölzl et al. 2023.

`create(name, num_classes=..., **kwargs)` returns a Haiku transformed model;
`available()` lists the names: "cnn_tramer", "eq_cnn", "eq_resnet9",
"eq_wrn", "nf_resnet50", "resnet9", "wrn". `dpeq.models.finetune` restores a
model for a new task and splits its parameters into trainable and frozen.
"""

from dpeq.models import finetune
from dpeq.models.registry import available, create, model_kwargs

__all__ = ["available", "create", "finetune", "model_kwargs"]
