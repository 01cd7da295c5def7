"""The end-of-run report: `report.md` plus PNG plots beside it.

`write_report(workdir)` reads what the run left in its workdir:
- `config.json`: the resolved experiment config (`ConfigDict.to_dict()`);
- `privacy.json`: the privacy ledger (`PrivacyLedger.to_dict()`: epsilon,
  delta, num_updates, noise_multiplier, sampling_rate, ...);
- `metrics.jsonl`: training and evaluation records (conventions in
  `dpeq.training.run_log`).
Each is optional: what is missing is said in the report, never an error. It
writes `report.md` (setup, privacy, final metrics of the last / EMA / Polyak
parameters, last training statistics, the full config) and, when the series
exist, `loss_accuracy.png`, `epsilon.png` and `sparsity.png`. Plots are drawn
with matplotlib's Agg canvas (no display, no global backend change).
"""

import collections
import json
import logging
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib.figure import Figure

from dpeq.training import release
from dpeq.training import run_log as run_logging

REPORT_FILE = "report.md"
LOSS_ACCURACY_PLOT = "loss_accuracy.png"
EPSILON_PLOT = "epsilon.png"
SPARSITY_PLOT = "sparsity.png"
AUDIT_FILE = "audit.json"  # written by python -m dpeq.audit
SPARSITY_PREFIX = "sparsity"
NON_PRIVATE = run_logging.NON_PRIVATE_PREFIX
TRAIN_LOSS_KEY = NON_PRIVATE + "loss"
TRAIN_ACCURACY_KEYS = (NON_PRIVATE + "train_accuracy", "accuracy")
EVAL_COLUMNS = (  # (record key, column title, formatter)
    ("accuracy", "top-1", "percent"),
    ("top5", "top-5", "percent"),
    ("loss", "loss", "number"),
    ("brier", "Brier", "number"),
    ("ece", "ECE", "number"),
)

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------
# Reading the workdir.


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
  if not path.exists():
    return None
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    _log.warning("cannot read %s: %s", path, e)
    return None
  return value if isinstance(value, dict) else None


class _Series:
  """Records of one run, deduplicated by (kind, params, step), sorted by step."""

  def __init__(self, records: Sequence[Mapping[str, Any]]):
    latest: dict[tuple[str, str, int], Mapping[str, Any]] = {}
    for record in records:
      step = record.get("step")
      if not isinstance(step, int | float):
        continue
      if run_logging.is_evaluation(record):
        key = ("eval", str(record["params"]), int(step))
      else:
        key = ("train", "", int(step))
      latest[key] = record  # a resumed run's repeat replaces the earlier one
    ordered = sorted(latest.items(), key=lambda item: item[0][2])
    self.train = [r for (kind, _, _), r in ordered if kind == "train"]
    self.eval: dict[str, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for (kind, params, _), record in ordered:
      if kind == "eval":
        self.eval[params].append(record)

  def train_curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    return _curve(self.train, key)

  def sparsity_keys(self) -> list[str]:
    keys = set()
    for record in self.train + [r for rs in self.eval.values() for r in rs]:
      keys.update(k for k in record if k.startswith(SPARSITY_PREFIX))
    return sorted(keys)


def _curve(records, key) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the records with a numeric `key` (nulls skipped)."""
  pairs = [
      (r["step"], r[key])
      for r in records
      if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
  ]
  if not pairs:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*pairs, strict=True)
  return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def _params_order(names) -> list[str]:
  """"last" first, then the averages in name order."""
  return sorted(names, key=lambda name: (name != "last", name))


def _smooth(values: np.ndarray) -> np.ndarray:
  """Trailing moving average over ~2% of the points (noisy DP losses).

  Returns `values` itself when the window is a single point.
  """
  window = max(1, len(values) // 50)
  if window == 1:
    return values
  kernel = np.ones(window) / window
  padded = np.concatenate([np.full(window - 1, values[0]), values])
  return np.convolve(padded, kernel, mode="valid")


# ----------------------------------------------------------------------------
# Plots.


def _save(figure: Figure, path: pathlib.Path) -> None:
  backend_agg.FigureCanvasAgg(figure)
  figure.tight_layout()
  figure.savefig(path, dpi=110)


def _plot_loss_accuracy(series: _Series, path: pathlib.Path) -> bool:
  train_loss = series.train_curve(TRAIN_LOSS_KEY)
  train_acc = next(
      (c for c in map(series.train_curve, TRAIN_ACCURACY_KEYS) if c[0].size),
      (np.zeros(0), np.zeros(0)),
  )
  eval_loss = {p: _curve(rs, "loss") for p, rs in series.eval.items()}
  eval_acc = {p: _curve(rs, "accuracy") for p, rs in series.eval.items()}
  if not (train_loss[0].size or train_acc[0].size or series.eval):
    return False
  figure = Figure(figsize=(11, 4.2))
  ax_loss, ax_acc = figure.subplots(1, 2)
  if train_loss[0].size:
    smooth = _smooth(train_loss[1])
    if smooth is not train_loss[1]:
      ax_loss.plot(*train_loss, color="0.75", lw=0.8,
                   label="train batch, non-private (per update)")
    ax_loss.plot(train_loss[0], smooth, color="0.25", lw=1.5,
                 label="train batch, non-private")
  if train_acc[0].size:
    ax_acc.plot(train_acc[0], _smooth(train_acc[1]), color="0.25", lw=1.5,
                label="train batch, view 0, non-private")
  for params in _params_order(series.eval):
    if eval_loss[params][0].size:
      ax_loss.plot(*eval_loss[params], marker="o", ms=3, label=f"eval: {params}")
    if eval_acc[params][0].size:
      ax_acc.plot(*eval_acc[params], marker="o", ms=3, label=f"eval: {params}")
  ax_loss.set(title="Cross-entropy loss", xlabel="update step", ylabel="nats")
  ax_acc.set(title="Top-1 accuracy", xlabel="update step", ylabel="accuracy")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  _save(figure, path)
  return True


def _plot_epsilon(series: _Series, target: float | None, delta: Any,
                  path: pathlib.Path) -> bool:
  steps, epsilon = series.train_curve("epsilon")
  if not steps.size:
    return False
  figure = Figure(figsize=(6, 4.2))
  ax = figure.subplots()
  ax.plot(steps, epsilon, lw=1.5, label="epsilon spent")
  if isinstance(target, int | float) and math.isfinite(target):
    ax.axhline(target, color="C3", ls="--", lw=1, label=f"target {target:g}")
  delta_text = f" (delta = {delta:.3g})" if isinstance(delta, int | float) else ""
  ax.set(title=f"Privacy spent{delta_text}", xlabel="update step",
         ylabel="epsilon")
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  _save(figure, path)
  return True


def _eps_order(label: str) -> tuple[float, str]:
  try:
    return float(label), label
  except ValueError:
    return math.inf, label


def _plot_sparsity(series: _Series, path: pathlib.Path) -> bool:
  """One panel per quantity (e.g. grad, params); colour = eps, style = params.

  Keys are `sparsity/<quantity>/<eps>` (a key without a quantity goes to a
  panel of its own name).
  """
  sources = [("", series.train)] + [
      (params, series.eval[params]) for params in _params_order(series.eval)
  ]
  panels: dict[str, list[tuple[str, str, np.ndarray, np.ndarray]]] = {}
  for key in series.sparsity_keys():
    parts = key.split("/")
    quantity = parts[1] if len(parts) >= 3 else key
    eps = parts[-1] if len(parts) >= 3 else ""
    for params, records in sources:
      steps, values = _curve(records, key)
      if steps.size:
        panels.setdefault(quantity, []).append((eps, params, steps, values))
  if not panels:
    return False
  titles = {"grad": "privatized gradient", "params": "parameters"}
  figure = Figure(figsize=(5.5 * len(panels) + 1.5, 4.2))
  axes = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)[0])
  styles = ("-", "--", ":", "-.")
  for ax, (quantity, curves) in zip(axes, sorted(panels.items()), strict=True):
    eps_labels = sorted({eps for eps, *_ in curves}, key=_eps_order)
    params_names = list(dict.fromkeys(params for _, params, _, _ in curves))
    curves.sort(key=lambda c: (eps_labels.index(c[0]), params_names.index(c[1])))
    for eps, params, steps, values in curves:
      color = f"C{eps_labels.index(eps) % 10}"
      style = styles[params_names.index(params) % len(styles)]
      label = f"eps={eps}" if eps else quantity
      if len(params_names) > 1:
        label += f" ({params})"
      ax.plot(steps, values, color=color, ls=style, marker="." if
              len(steps) < 50 else None, label=label)
    ax.set(title=f"{titles.get(quantity, quantity)}: fraction with |x| <= eps",
           xlabel="update step", ylabel="fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
  _save(figure, path)
  return True


# ----------------------------------------------------------------------------
# Markdown.


def _format(value: Any, how: str = "number") -> str:
  if value is None:
    return "n/a"
  if isinstance(value, bool) or not isinstance(value, int | float):
    return str(value)
  if math.isinf(value):
    return "inf"
  if how == "percent":
    return f"{100 * value:.2f}%"
  if isinstance(value, int):
    return str(value)
  return f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def _get(config: Mapping[str, Any] | None, dotted: str) -> Any:
  value: Any = config
  for part in dotted.split("."):
    if not isinstance(value, Mapping) or part not in value:
      return None
    value = value[part]
  return value


def _setup_section(config: Mapping[str, Any] | None) -> list[str]:
  lines = ["## Setup", ""]
  if config is None:
    return lines + ["`config.json` was not found in the workdir.", ""]
  kwargs = _get(config, "model.kwargs") or {}
  model = _get(config, "model.name")
  if kwargs:
    model = f"{model} ({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
  optimizer = _get(config, "training.optimizer") or {}
  schedule = _get(config, "training.lr_schedule.name")
  rows = [
      ("model", model),
      ("dataset", f"{_get(config, 'data.dataset')} "
                  f"(train: {_get(config, 'data.train_split')}, "
                  f"eval: {_get(config, 'data.eval_split')})"),
      ("expected batch size B", _get(config, "training.expected_batch_size")),
      ("augmentation multiplicity K", _get(config, "training.augmult")),
      ("optimizer", f"{optimizer.get('name')}, lr {optimizer.get('learning_rate')}"
                    f" ({schedule}), momentum {optimizer.get('momentum')}, "
                    f"weight decay {optimizer.get('weight_decay')}"),
      ("EMA decays / Polyak", f"{_get(config, 'training.ema_decays')} / "
                              f"{_get(config, 'training.polyak')}"),
      ("model initialisation seed (public)", _get(config, "seed")),
      ("noise and batch randomness",
       "secret (operating-system entropy)"
       if _get(config, "dp.reproducible_seed") is None else
       f"REPRODUCIBLE from the public seed "
       f"{_get(config, 'dp.reproducible_seed')}: not private against anyone "
       "who knows it"),
  ]
  return lines + _table(["", "value"], [(k, _format(v)) for k, v in rows]) + [""]


def _privacy_section(config, privacy, series: _Series) -> list[str]:
  lines = ["## Privacy", ""]
  non_private = bool(_get(config, "dp.non_private"))
  if privacy is None:
    lines += ["`privacy.json` was not found; values below come from the config.",
              ""]
    privacy = {}
  steps, epsilon = series.train_curve("epsilon")
  spent = privacy.get("epsilon", epsilon[-1] if epsilon.size else None)
  sigma = privacy.get("noise_multiplier", _get(config, "dp.noise_multiplier"))
  clip = privacy.get("l2_clip_norm", _get(config, "dp.l2_clip_norm"))
  # The plan's numbers (privacy.json), not re-derived here.
  sensitivity = privacy.get("sensitivity")
  noise_on_mean = privacy.get("noise_std_of_mean")
  seed = _get(config, "dp.reproducible_seed")
  lines += [release.THREAT_MODEL, ""]
  if seed is not None:
    lines += ["**" + release.REPRODUCIBLE_WARNING.format(seed=seed) + "**", ""]
  rows = [
      ("noise multiplier sigma", sigma),
      ("updates T", privacy.get("num_updates",
                                _get(config, "training.num_updates"))),
      ("sampling rate q", privacy.get("sampling_rate")),
      ("sampling", privacy.get("sampling", _get(config, "dp.sampling"))),
      ("training examples n", privacy.get("num_examples")),
      ("clip norm C", clip),
      ("sensitivity of the clipped sum (C, or 1 rescaled)", sensitivity),
      ("noise std on the mean gradient (sigma x sensitivity / B)",
       noise_on_mean),
      ("**delta** (accountant + noise sampler's cut tail)",
       privacy.get("delta", _get(config, "dp.delta"))),
      ("delta of the accountant", privacy.get("accountant_delta")),
      ("delta of the float32 noise's cut tail",
       privacy.get("noise_tail_delta")),
      ("accountant", privacy.get("accountant", _get(config, "dp.accountant"))),
      ("target epsilon", _get(config, "dp.target_epsilon")),
      ("**epsilon spent**", spent),
  ]
  if "neighboring_relation" in privacy:
    rows.insert(4, ("neighbouring relation", privacy["neighboring_relation"]))
  if non_private:
    lines += ["**This run is not private** (`dp.non_private=True`).", ""]
  return lines + _table(["", "value"], [(k, _format(v)) for k, v in rows]) + [""]


def _metrics_section(series: _Series, config) -> list[str]:
  lines = ["## Final metrics", ""]
  if not series.eval:
    lines += ["No evaluation records in `metrics.jsonl`.", ""]
  else:
    rows, on_training_data = [], False
    for params in _params_order(series.eval):
      final = series.eval[params][-1]
      on_training_data |= bool(final.get(run_logging.EVAL_ON_TRAINING_DATA))
      rows.append([f"`{params}`", _format(final["step"])]
                  + [_format(final.get(key), how) for key, _, how in EVAL_COLUMNS])
    header = ["params", "step"] + [title for _, title, _ in EVAL_COLUMNS]
    if on_training_data:
      lines += [
          f"**Not covered by epsilon:** evaluated on "
          f"`{_get(config, 'data.eval_split')}`, which overlaps the training "
          f"split `{_get(config, 'data.train_split')}` "
          "(`data.allow_eval_on_training_data=True`).", ""]
    lines += _table(header, rows) + [""]
  if series.train:
    last = series.train[-1]
    values = [(k, v) for k, v in last.items()
              if k != "step" and not isinstance(v, list | dict)]
    private = [(k, _format(v)) for k, v in values
               if not k.startswith(NON_PRIVATE)]
    diagnostics = [(k[len(NON_PRIVATE):], _format(v)) for k, v in values
                   if k.startswith(NON_PRIVATE)]
    lines += [f"Last training record (update step {last['step']}), private "
              "values (functions of the noisy updates):", ""]
    lines += _table(["", "value"], private) + [""]
    if diagnostics:
      lines += ["Non-private diagnostics of the same (non-noised) batch, "
                "**not covered by epsilon** and not for publication:", ""]
      lines += _table(["", "value"], diagnostics) + [""]
  return lines


def _audit_section(audit: Mapping[str, Any] | None) -> list[str]:
  """`audit.json` of `python -m dpeq.audit` (nothing when absent)."""
  if not audit:
    return []
  lines = ["## Empirical privacy audit", "",
           "Written by `python -m dpeq.audit`: canaries inserted by fair coin "
           "flips, lower bounds on epsilon from their scores "
           "(jax_privacy.auditing). An empirical bound above the theoretical "
           "epsilon would mean the guarantee does not hold. Clopper-Pearson "
           "presumes independent trials (one canary per run); the one-run "
           "bound (Steinke et al. 2023) is the one valid for many canaries "
           "in one run.", ""]
  rows = []
  for r in audit.get("results", []):
    rows.append([
        str(r.get("kind")), f"{r.get('num_canaries')} ({r.get('num_included')} in)",
        _format(r.get("epsilon_one_run")),
        _format(r.get("epsilon_clopper_pearson")),
        _format(r.get("theoretical_epsilon")), _format(r.get("delta"), "delta"),
        f"{100 * (1 - float(r.get('significance', 0))):g}%",
        "VIOLATED" if r.get("violated") else "holds"])
  lines += _table(["canaries", "m", "empirical eps (one run)",
                   "empirical eps (Clopper-Pearson)", "theoretical eps",
                   "delta", "confidence", "guarantee"], rows)
  lines.append("")
  return lines


def write_report(workdir: str | os.PathLike) -> pathlib.Path:
  """Writes `workdir/report.md` and its PNG plots; returns the report's path.

  Args:
    workdir: a run directory (see the module docstring for what it reads).

  Returns:
    The path of `report.md`.
  """
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise ValueError(f"workdir {str(workdir)!r} is not a directory; pass a run "
                     "directory.")
  config = _read_json(workdir / "config.json")
  privacy = _read_json(workdir / "privacy.json")
  series = _Series(run_logging.read_records(workdir))

  title = workdir.resolve().name
  lines = [f"# dpeq run report: {title}", ""]
  lines += _setup_section(config)
  lines += _privacy_section(config, privacy, series)
  lines += _metrics_section(series, config)
  lines += _audit_section(_read_json(workdir / AUDIT_FILE))

  plots = []
  target = _get(config, "dp.target_epsilon")
  delta = (privacy or {}).get("delta", _get(config, "dp.delta"))
  for name, caption, drawn in (
      (LOSS_ACCURACY_PLOT, "Loss and accuracy",
       lambda p: _plot_loss_accuracy(series, p)),
      (EPSILON_PLOT, "Epsilon over update steps",
       lambda p: _plot_epsilon(series, target, delta, p)),
      (SPARSITY_PLOT, "l0-eps sparsity (Hölzl et al. Fig. 3)",
       lambda p: _plot_sparsity(series, p)),
  ):
    path = workdir / name
    if drawn(path):
      plots.append((name, caption))
    elif path.exists():
      path.unlink()  # a stale plot of an earlier report
  lines += ["## Plots", ""]
  if not plots:
    lines += ["No series to plot in `metrics.jsonl`.", ""]
  for name, caption in plots:
    lines += [f"### {caption}", "", f"![{caption}]({name})", ""]

  if config is not None:
    lines += ["## Full config", "", "```json",
              json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
  path = workdir / REPORT_FILE
  path.write_text("\n".join(lines), encoding="utf-8")
  return path
