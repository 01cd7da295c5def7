"""The plots of a reproduction study: test accuracy against epsilon and
against training wall-clock (matplotlib, written as PNG files).

Rows and records are those of experiments/reproduce/harness.py: a row is a
(model, eps, number of updates) group of final runs, a record one run.
A model run at several lengths gets one series per length.
"""

import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any


def accuracy_vs_epsilon(rows: Sequence[Mapping[str, Any]],
                        path: pathlib.Path, *, title: str,
                        reference_lines: Sequence[tuple[float, str]] = ()
                        ) -> None:
  """Median test accuracy (%) over seeds against epsilon, std as error bars."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  lengths = lengths_per_model(rows)
  for model, num_updates in sorted(
      {(r["model"], r["num_updates"]) for r in rows}):
    points = sorted((r["eps"], r["median"], r["std"]) for r in rows
                    if (r["model"], r["num_updates"]) == (model, num_updates))
    ax.errorbar([p[0] for p in points], [100 * p[1] for p in points],
                yerr=[100 * p[2] for p in points], marker="o", capsize=3,
                label=series_label(model, num_updates, lengths))
  _finish(fig, ax, path, xlabel="epsilon", title=title,
          reference_lines=reference_lines)


def accuracy_vs_wallclock(runs: Sequence[Mapping[str, Any]],
                          params_of: Callable[[str], str],
                          path: pathlib.Path, *, title: str,
                          reference_lines: Sequence[tuple[float, str]] = ()
                          ) -> bool:
  """Test accuracy (%) of `params_of(model)` against training minutes, one
  line per run (a run without a curve is one point at its wall-clock).

  Returns False (and writes nothing) when `runs` is empty.
  """
  if not runs:
    return False
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  colours = {}
  lengths = lengths_per_model(runs)
  for record in sorted(runs, key=lambda r: (r["model"], r["num_updates"],
                                            r["seed"])):
    series = series_label(record["model"], record["num_updates"], lengths)
    params = params_of(record["model"])
    curve = record.get("curve") or [{
        "train_seconds": record["wall_s"], "accuracy": record["accuracy"]}]
    xs = [point["train_seconds"] / 60 for point in curve]
    ys = [100 * point["accuracy"][params] for point in curve]
    line, = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1,
                    color=colours.get(series),
                    label=None if series in colours else series)
    colours[series] = line.get_color()
  _finish(fig, ax, path,
          xlabel="training wall-clock (min, 2-core CPU; evaluations excluded)",
          title=title, reference_lines=reference_lines)
  return True


def lengths_per_model(runs: Iterable[Mapping[str, Any]]) -> dict[str, set]:
  """model -> the numbers of updates its runs (or rows) have."""
  lengths = {}
  for run in runs:
    lengths.setdefault(run["model"], set()).add(run["num_updates"])
  return lengths


def series_label(model: str, num_updates: int,
                 lengths: Mapping[str, set]) -> str:
  """`model`, with its length when the model ran at several lengths."""
  if len(lengths.get(model, ())) > 1:
    return f"{model}, T = {num_updates}"
  return model


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  return pyplot


def _finish(fig, ax, path: pathlib.Path, *, xlabel: str, title: str,
            reference_lines: Sequence[tuple[float, str]]) -> None:
  """Reference lines, labels, grid and legend; saves and closes `fig`."""
  for value, label in reference_lines:
    ax.axhline(value, color="grey", linestyle=":", label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  _pyplot().close(fig)
