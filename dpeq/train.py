r"""Command line entry point: trains one experiment config end to end.

  python -m dpeq.train --config=experiments/configs/fashion_mnist.py[:ARGS] \
      [--config.dp.target_epsilon=2] [--config.seed=1] --workdir=runs/NAME

The config file defines `get_config(arg: str = "")` returning a config built
from `dpeq.training.config.base_config()`; `--config.a.b=v` overrides any of
its fields. Re-running with the same `--workdir` resumes from the latest
checkpoint there. A config the runner cannot use stops the run before any
work with a message naming the field (exit status 2, no traceback).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from dpeq.training import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:argument]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and the report; an "
    "existing run there is resumed.")
flags.mark_flags_as_required(["config", "workdir"])

CONFIG_ERROR_EXIT_STATUS = 2


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    config_lib.validate(_CONFIG.value)
    # Imported here so that a bad config fails before JAX starts.
    from dpeq.training import loop  # pylint: disable=g-import-not-at-top
    loop.train(_CONFIG.value, workdir=_WORKDIR.value)
  except config_lib.ConfigError as e:
    print(f"Invalid config: {e}", file=sys.stderr)
    sys.exit(CONFIG_ERROR_EXIT_STATUS)


if __name__ == "__main__":
  app.run(main)
