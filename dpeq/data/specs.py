"""What dpeq knows about each dataset: shapes, classes, splits, files.

A `DatasetSpec` is static metadata only (no I/O). The loaders in
`dpeq.data.tfds_source`, `dpeq.data.raw` and `dpeq.data.datasets` read it.

Splits (as De et al. use them): "train_valid" is the whole official training
set, "valid" its last `valid_size` examples, "train" the rest, and "test" the
official test (or validation, where the test labels are not public) set.
Held-out sizes follow jax_privacy: 5,000 for CIFAR-10/100 and SVHN, 10,000
for the MNIST family, Tiny-ImageNet and ImageNet, 1,000 for Imagenette.
"""

import dataclasses

# Splits `dpeq.data.load` accepts.
SPLITS = ("train", "valid", "train_valid", "test")

# Normalisation constants, per channel in [0, 1] units. They are FIXED PUBLIC
# numbers, long published with each dataset's standard training code; dpeq
# never computes statistics of the split a run trains on (those would not be
# covered by the DP guarantee).
# De et al. (jax_privacy) CIFAR-10.
CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)
# The usual ImageNet constants (also used for its subsets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The PyTorch MNIST example's constants.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
# The constants commonly published with Fashion-MNIST training code.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static description of one dataset.

  Attributes:
    name: dpeq's name (the `name` argument of `dpeq.data.load`).
    num_classes: number of labels; labels are int32 in [0, num_classes).
    image_shape: (H, W, C) of every stored image (C = 1 for grayscale).
    valid_size: default number of training examples held out as "valid".
    raw_format: layout of the original files for `source="raw"`: "idx"
      (MNIST family), "cifar10" / "cifar100" (python batches), "svhn_mat",
      "tiny_imagenet", "image_folder" (class-per-folder), or None.
    raw_files: file or folder names `raw_dir` must hold (for messages).
    tfds_name: tfds builder name with config (None: not in tfds).
    tfds_test_split: tfds split that plays "test".
    tfds_files: files tfds needs in `manual_dir` to prepare offline.
    tfds_manual_only: tfds cannot download it (ImageNet): manual_dir needed.
    mean: fixed public per-channel mean in [0, 1] units (never computed
      from the training data).
    std: like `mean`, for the per-channel standard deviation.
    needs_max_examples: the full split does not fit in memory; `load` then
      requires `max_examples` (the interface leaves room for streaming).
    variable_size: source images differ in size; each is resized (shorter
      side to H, bilinear with antialiasing) and centre-cropped to H x W.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  valid_size: int
  raw_format: str | None
  raw_files: tuple[str, ...]
  tfds_name: str | None
  tfds_test_split: str = "test"
  tfds_files: tuple[str, ...] = ()
  tfds_manual_only: bool = False
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  needs_max_examples: bool = False
  variable_size: bool = False


_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_SPECS = (
    DatasetSpec(
        name="mnist",
        num_classes=10,
        image_shape=(28, 28, 1),
        valid_size=10_000,
        raw_format="idx",
        raw_files=_IDX_FILES,
        tfds_name="mnist",
        tfds_files=_IDX_FILES,
        mean=MNIST_MEAN,
        std=MNIST_STD,
    ),
    DatasetSpec(
        name="fashion_mnist",
        num_classes=10,
        image_shape=(28, 28, 1),
        valid_size=10_000,
        raw_format="idx",
        raw_files=_IDX_FILES,
        tfds_name="fashion_mnist",
        tfds_files=_IDX_FILES,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
    ),
    DatasetSpec(
        name="cifar10",
        num_classes=10,
        image_shape=(32, 32, 3),
        valid_size=5_000,
        raw_format="cifar10",
        raw_files=("cifar-10-batches-py/ (data_batch_1..5, test_batch) or "
                   "cifar-10-python.tar.gz",),
        tfds_name="cifar10",
        tfds_files=("cifar-10-binary.tar.gz",),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ),
    DatasetSpec(
        name="cifar100",
        num_classes=100,
        image_shape=(32, 32, 3),
        valid_size=5_000,
        raw_format="cifar100",
        raw_files=("cifar-100-python/ (train, test) or cifar-100-python.tar.gz",),
        tfds_name="cifar100",
        tfds_files=("cifar-100-binary.tar.gz",),
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
    ),
    DatasetSpec(
        name="svhn_cropped",
        num_classes=10,
        image_shape=(32, 32, 3),
        valid_size=5_000,
        raw_format="svhn_mat",
        raw_files=("train_32x32.mat", "test_32x32.mat"),
        tfds_name="svhn_cropped",
        # tfds also prepares the "extra" split, so it needs all three.
        tfds_files=("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"),
        mean=SVHN_MEAN,
        std=SVHN_STD,
    ),
    DatasetSpec(
        name="imagenette",
        num_classes=10,
        # Imagenette v2, 160 px version: shorter side resized to 160, centre
        # crop 160 x 160; its "val" folder is dpeq's "test".
        image_shape=(160, 160, 3),
        valid_size=1_000,
        raw_format="image_folder",
        raw_files=("train/<class>/*.JPEG", "val/<class>/*.JPEG"),
        tfds_name="imagenette/160px-v2",
        tfds_test_split="validation",
        tfds_files=("imagenette2-160.tgz",),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        variable_size=True,
    ),
    DatasetSpec(
        name="tiny_imagenet",
        num_classes=200,
        image_shape=(64, 64, 3),
        valid_size=10_000,
        raw_format="tiny_imagenet",
        raw_files=("train/<wnid>/images/*.JPEG", "val/images/*.JPEG",
                   "val/val_annotations.txt"),
        tfds_name=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    DatasetSpec(
        name="imagenet2012",
        num_classes=1000,
        # Shorter side resized to 224, centre crop 224 x 224.
        image_shape=(224, 224, 3),
        valid_size=10_000,
        raw_format=None,
        raw_files=(),
        tfds_name="imagenet2012",
        tfds_test_split="validation",
        tfds_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
        tfds_manual_only=True,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        needs_max_examples=True,
        variable_size=True,
    ),
)

_BY_NAME = {spec.name: spec for spec in _SPECS}
for _spec in _SPECS:  # every dataset carries its fixed constants
  if len(_spec.mean) != _spec.image_shape[-1] or len(_spec.std) != len(
      _spec.mean):
    raise AssertionError(f"{_spec.name}: mean/std need one value per channel")


def available() -> tuple[str, ...]:
  """Names `dpeq.data.load` accepts."""
  return tuple(_BY_NAME)


def get_spec(name: str) -> DatasetSpec:
  """The `DatasetSpec` of `name`; ValueError listing the known names."""
  try:
    return _BY_NAME[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset {name!r}: use one of {', '.join(available())}."
    ) from None
