"""Helpers shared by the experiment config files of this folder.

Config files are loaded by path (`--config=experiments/configs/NAME.py:ARGS`)
from the repository root, which is then on `sys.path`, so they import this
module as `experiments.configs.common`.

The config argument is a comma-separated list of `key=value` pairs, e.g.
`"eps=8,depth=40"`; every key has a fixed set of valid values and a default.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import config_dict

from dpeq import paths
from dpeq.training import config as config_lib


def parse_arg(
    arg: str | None,
    *,
    options: Mapping[str, Sequence[Any]],
    defaults: Mapping[str, Any],
    config_name: str,
) -> dict[str, Any]:
  """Parses a config argument like "eps=8,group=D4" into typed values.

  Args:
    arg: the part after ":" in `--config=FILE.py:ARG` ("" or None: defaults).
    options: for every key, its valid values (typed: numbers or strings); a
      given value matches a number when it parses to the same float.
    defaults: the value of every key that the argument leaves out (None for
      an optional key whose default depends on other keys).
    config_name: the config file's name, for messages.

  Returns:
    A dict with every key of `options`, its value taken from `options`.

  Raises:
    ConfigError: for a malformed pair, an unknown key or a value that is not
      among the key's valid values; the message lists the valid ones.
  """
  values = dict(defaults)
  usage = "; ".join(
      f"{key} in {{{', '.join(map(str, choices))}}} "
      + ("(optional)" if defaults[key] is None else f"(default {defaults[key]})")
      for key, choices in options.items()
  )
  for pair in (arg or "").split(","):
    pair = pair.strip()
    if not pair:
      continue
    key, sep, text = pair.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
      raise config_lib.ConfigError(
          f"config argument {pair!r} of {config_name} is not key=value; "
          f"valid: {usage or 'no arguments'}."
      )
    if key not in options:
      raise config_lib.ConfigError(
          f"unknown config argument {key!r} for {config_name}; valid: "
          f"{usage or 'no arguments'}."
      )
    match = [choice for choice in options[key] if _matches(choice, text)]
    if not match:
      raise config_lib.ConfigError(
          f"{key}={text} is not a valid value for {config_name}; use one of "
          f"{', '.join(map(str, options[key]))}."
      )
    values[key] = match[0]
  return values


def _matches(choice: Any, text: str) -> bool:
  if isinstance(choice, int | float) and not isinstance(choice, bool):
    try:
      return float(text) == float(choice)
    except ValueError:
      return False
  return str(choice).lower() == text.lower()


def use_shared_data(config: config_dict.ConfigDict) -> None:
  """Reads the original files from ../shared/data/<dataset> when present.

  Offline machines (CI, the development checkout) keep the raw dataset files
  there; elsewhere the dataset comes through tfds (downloaded on first use).
  """
  raw_dir = paths.shared_data_dir(config.data.dataset)
  if raw_dir is not None:
    config.data.source = "raw"
    config.data.raw_dir = str(raw_dir)


def cifar10_data(config: config_dict.ConfigDict) -> None:
  """CIFAR-10 train_valid -> test, reflect-pad 4 random crops and flips,
  read from the shared original files when present."""
  config.data.dataset = "cifar10"
  config.data.train_split = "train_valid"
  config.data.eval_split = "test"
  config.data.augmentation.crop_padding = 4
  config.data.augmentation.random_flip = True
  use_shared_data(config)


def finish(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """Validates the config (raises ConfigError) and returns it."""
  config_lib.validate(config)
  return config
