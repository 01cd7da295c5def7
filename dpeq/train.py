r"""Command line entry point: trains one experiment config end to end.

  python -m dpeq.train --config=experiments/configs/fashion_mnist.py[:ARGS] \
      [--config.dp.target_epsilon=2] [--config.seed=1] --workdir=runs/NAME

The config file defines `get_config(arg: str = "")` returning a config built
from `dpeq.training.config.base_config()`; `--config.a.b=v` overrides any of
its fields. Re-running with the same `--workdir` resumes from the latest
checkpoint there. A config the runner cannot use (a bad file argument, an
unknown or mistyped override, a value `validate` rejects, data that cannot
be found) stops the run with a one-paragraph message naming the field and
exit status 2, without a traceback.

A run's noise and batches come from secret OS entropy, saved in the workdir
(secret_randomness.json) so that a resumed run continues bit for bit; two
runs of the same config differ. `--config.dp.reproducible_seed=N` makes runs
reproducible from the config, and NOT private against anyone who knows N.
On CPU, results are bit-for-bit identical across resumptions (and, with a
reproducible seed, across runs) when XLA uses one thread
(`taskset -c 0 python -m dpeq.train ...`; see dpeq.training.checkpointing).
"""

import sys

from absl import app, flags, logging
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
_CONFIG_ERROR_PREFIX = f"{config_lib.ConfigError.__module__}.ConfigError: "


def _exit_with(message: str) -> None:
  print(f"Invalid config: {message}", file=sys.stderr)
  sys.exit(CONFIG_ERROR_EXIT_STATUS)


def _config_error_text(error: BaseException) -> str | None:
  """The message of a ConfigError behind `error` (config_flags re-raises the
  errors of get_config with their traceback pasted into the message)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    text = str(error)
    for line in reversed(text.splitlines()):
      if line.strip().startswith(_CONFIG_ERROR_PREFIX):
        return line.strip()[len(_CONFIG_ERROR_PREFIX):]
    if isinstance(error, config_lib.ConfigError):
      return text
    error = error.__cause__ or error.__context__
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with readable messages for config mistakes."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = _config_error_text(e)
    if message is not None:
      _exit_with(message)
    print(f"{e}\nPass --helpshort or --helpfull to see help on flags.",
          file=sys.stderr)
    sys.exit(CONFIG_ERROR_EXIT_STATUS)
  except (AttributeError, KeyError) as e:
    # An override of a field the config does not have (--config.dp.epsilon).
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    _exit_with(f"an override names a field that does not exist ({e}); "
               f"overrides given: {', '.join(overrides)}. Fields are listed "
               "in dpeq.training.config.base_config().")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  config = _CONFIG.value
  try:
    config.keys()
  except OSError as e:  # config_flags defers a missing file to first use
    _exit_with(f"--config: {e}")
  try:
    config_lib.validate(config)
    # Imported here so that a bad config fails before the loop's imports.
    from dpeq.training import loop  # pylint: disable=g-import-not-at-top
    loop.train(config, workdir=_WORKDIR.value)
  except config_lib.ConfigError as e:
    _exit_with(str(e))
  except Exception as e:  # noqa: BLE001 (only a failed checkpoint write)
    from dpeq.training import checkpointing  # pylint: disable=g-import-not-at-top
    if not isinstance(e, checkpointing.CheckpointWriteError):
      raise
    print(f"Run stopped: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
