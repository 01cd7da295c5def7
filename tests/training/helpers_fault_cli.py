"""`python -m dpeq.train` with one injected SIGKILL (not collected by pytest).

  python tests/training/helpers_fault_cli.py FAULT N -- <dpeq.train flags>

FAULT is where the process kills itself, N counts the occurrences in this
process (1 = the first):
  checkpoint  inside the N-th checkpoint save, halfway through writing its
              record file (orbax's temporary directory partly written);
  metrics     halfway through the N-th metrics.jsonl line (half a line is
              flushed and fsynced, then the process dies);
  none        no fault.
The production code is untouched: the wrapper patches two methods before
handing over to dpeq.train's main.
"""

import os
import signal
import sys


def _die():
  os.kill(os.getpid(), signal.SIGKILL)


def main():
  fault, count = sys.argv[1], int(sys.argv[2])
  assert sys.argv[3] == "--", sys.argv
  sys.argv = ["dpeq.train", *sys.argv[4:]]
  from dpeq.training import checkpointing
  from dpeq.training import run_log as run_logging
  seen = {"n": 0}

  if fault == "checkpoint":
    # orbax (pinned in setup.py) writes the record item through this
    # handler; the N-th save dies halfway through writing that file, inside
    # orbax's temporary checkpoint directory.
    from orbax.checkpoint._src.handlers import json_checkpoint_handler
    handler = json_checkpoint_handler.JsonCheckpointHandler
    original_save_fn = handler._save_fn
    original = checkpointing.Checkpointer.save

    async def save_fn(self, x, directory):
      if seen["n"] < count:
        return await original_save_fn(self, x, directory)
      import json
      text = json.dumps(x)
      (directory / self._filename).write_text(text[:len(text) // 2])
      _die()

    def save(self, step, *, state, record):
      seen["n"] += 1
      return original(self, step, state=state, record=record)

    handler._save_fn = save_fn
    checkpointing.Checkpointer.save = save
  elif fault == "metrics":
    original_write = run_logging.MetricsWriter.write

    def write(self, record):
      seen["n"] += 1
      if seen["n"] < count:
        return original_write(self, record)
      import json
      line = json.dumps(run_logging.to_python(record)) + "\n"
      self._file.write(line[:len(line) // 2])
      self._file.flush()
      os.fsync(self._file.fileno())
      _die()

    run_logging.MetricsWriter.write = write
  elif fault != "none":
    raise SystemExit(f"unknown fault {fault!r}")

  from absl import app

  from dpeq import train
  app.run(train.main, flags_parser=train._parse_flags)


if __name__ == "__main__":
  main()
