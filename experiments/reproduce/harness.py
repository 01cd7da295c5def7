"""The reproduction harness shared by every data set: sweep, final, table.

A `Study` names the data set's config file, its models, the recipes swept
per model and the length of its final runs; `main(study)` runs it:

  sweep  a few recipes per model at `sweep_epsilon` for `sweep_updates`
         updates, trained on "train" and evaluated on "valid" (held out of
         the training set); the noise multiplier is calibrated to that
         epsilon at the sweep's own length. The best recipe and the best
         evaluated parameters (last, EMA, Polyak) per model are chosen on
         validation accuracy only, and saved.
  final  the chosen recipe (or the model's own default when it was not
         swept) at full length on "train_valid", evaluated once on "test",
         for every eps and seed asked for.
  table  rewrites the study's markdown table and plot from the recorded
         runs.

Each finished run appends one JSON line (config overrides, final metrics,
(epsilon, delta), wall-clock, image-gradients) to
experiments/results/<study>_runs.jsonl; a run already recorded there is not
repeated, and a killed run resumes from its checkpoints (same command, same
workdir). `seed` is the public seed of the model's initialisation; every
run's noise and batches come from secret OS entropy.

Selection caveat (said in every table): recipes and params are chosen on the
validation split, which the final runs then train on; that choice is not
covered by the stated epsilon (common practice, e.g. De et al.).
"""

import argparse
import dataclasses
import hashlib
import json
import math
import pathlib
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dpeq.training import loop
from experiments.bench import common
from experiments.reproduce import plots

RESULTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "results"
PARAMS = ("last", "ema_0.999", "polyak")

# Every run: no TensorBoard (time), one evaluation at the end.
_COMMON = {
    "logging.tensorboard": False,
    "logging.progress_bar": False,
    "logging.every_updates": 25,
    "eval.every_updates": 0,
}


@dataclasses.dataclass(frozen=True)
class Study:
  """One data set's reproduction.

  Attributes:
    name: file prefix of the results ("fashion_mnist", "cifar10").
    title: heading of the table.
    get_config: the config file's `get_config`, called with
      "model=<config model>,eps=<eps>".
    models: table model name -> (config model, config overrides).
    sweep: model -> candidate recipes (overrides) for the sweep.
    select_from: model -> the model whose selected recipe it takes.
    final_length: model -> overrides sizing its final runs.
    sweep_batch_size / sweep_updates / sweep_epsilon: the sweep's runs.
    reference_lines: (accuracy %, label) drawn on the plot.
    epsilons: the default epsilons of the final stage.
    curve_points: evaluations along each final run at `sweep_epsilon`
      (the accuracy-against-wall-clock plot); other runs evaluate once.
    params_chosen: model -> params ("last", "ema_0.999", "polyak") chosen on
      validation outside this study's sweep (e.g. by an ablation).
  """

  name: str
  title: str
  get_config: Callable[[str], Any]
  models: Mapping[str, tuple[str, Mapping[str, Any]]]
  sweep: Mapping[str, tuple[Mapping[str, Any], ...]]
  select_from: Mapping[str, str]
  final_length: Mapping[str, Mapping[str, Any]]
  sweep_batch_size: int
  sweep_updates: int
  sweep_epsilon: float = 3
  reference_lines: tuple[tuple[float, str], ...] = ()
  epsilons: tuple[float, ...] = (3, 1, 2, 8)
  curve_points: int = 8
  params_chosen: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def runs_file(self) -> str:
    return f"{self.name}_runs.jsonl"

  @property
  def selected_file(self) -> str:
    return f"{self.name}_selected.json"

  @property
  def table_file(self) -> str:
    return f"{self.name}.md"

  @property
  def plot_file(self) -> str:
    return f"{self.name}_test_accuracy.png"

  @property
  def wallclock_plot_file(self) -> str:
    return f"{self.name}_test_accuracy_vs_wallclock.png"


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run.

  Attributes:
    model: a key of Study.models.
    eps: target epsilon.
    seed: config.seed (the public seed of the model's initialisation).
    overrides: dotted config field -> value, on top of the config file.
    stage: "sweep" (train -> valid) or "final" (train_valid -> test).
  """

  model: str
  eps: float
  seed: int
  overrides: tuple[tuple[str, Any], ...]
  stage: str

  @property
  def key(self) -> str:
    """A stable identifier (also the workdir name)."""
    text = ",".join(f"{k}={_text(v)}" for k, v in self.overrides)
    return (f"{self.stage}/{self.model}/eps{self.eps:g}/seed{self.seed}/"
            f"{_digest(text)}")


def _text(value: Any) -> str:
  return json.dumps(value, sort_keys=True, default=str)


def _digest(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()[:10]


def apply_overrides(config, overrides: Mapping[str, Any]):
  """Sets dotted fields of an ml_collections config (in place); returns it."""
  for field, value in overrides.items():
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      node = node[part]
    if isinstance(value, list):
      value = tuple(value)
    node[leaf] = value
  return config


def make_config(study: Study, run: Run):
  """The runner config of `run` (validated by the runner)."""
  config_model, model_overrides = study.models[run.model]
  config = study.get_config(f"model={config_model},eps={run.eps:g}")
  overrides = dict(_COMMON)
  overrides.update(model_overrides)
  # Resumable: a killed run continues from its newest checkpoint.
  overrides["checkpoint.every_updates"] = 25 if run.stage == "sweep" else 50
  if run.stage == "sweep":
    overrides.update({"data.train_split": "train", "data.eval_split": "valid",
                      "training.num_updates": study.sweep_updates,
                      "training.expected_batch_size": study.sweep_batch_size})
  overrides.update(dict(run.overrides))
  overrides["seed"] = run.seed
  config = apply_overrides(config, overrides)
  if run.stage == "final" and run.eps == study.sweep_epsilon:
    config.eval.every_updates = max(
        1, math.ceil(config.training.num_updates / study.curve_points))
  return config


def read_curve(workdir: pathlib.Path) -> list[dict[str, Any]]:
  """Test accuracy along a run: [{"step", "train_seconds", "accuracy"}].

  "train_seconds" is the training record's wall-clock of the last process
  (evaluations excluded); a resumed run's curve starts at its resume.
  """
  seconds, accuracy = {}, {}
  path = workdir / "metrics.jsonl"
  for line in path.read_text().splitlines() if path.exists() else ():
    record = json.loads(line)
    key = "nonprivate/" + loop.TRAIN_SECONDS
    if key in record:
      seconds[record["step"]] = record[key]
    elif "params" in record and "accuracy" in record:
      accuracy.setdefault(record["step"], {})[record["params"]] = (
          record["accuracy"])
  return [{"step": step, "train_seconds": seconds[step],
           "accuracy": accuracy[step]}
          for step in sorted(accuracy) if step in seconds]


# ----------------------------------------------------------------------------
# Recorded runs.


def load_records(study: Study, results_dir: pathlib.Path
                 ) -> list[dict[str, Any]]:
  path = results_dir / study.runs_file
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.strip()]


def execute(study: Study, run: Run, *, results_dir: pathlib.Path,
            workdir_root: pathlib.Path, log=print) -> dict[str, Any]:
  """Trains `run` unless already recorded; returns its record."""
  for record in load_records(study, results_dir):
    if record["key"] == run.key:
      return record
  config = make_config(study, run)
  workdir = workdir_root / run.key
  log(f"[{time.strftime('%H:%M:%S')}] {run.key}: {dict(run.overrides)}")
  start = time.perf_counter()
  final = loop.train(config, workdir=workdir)
  wall = time.perf_counter() - start
  training = config.training
  record = {
      "key": run.key, "model": run.model, "eps": run.eps, "seed": run.seed,
      "stage": run.stage, "overrides": dict(run.overrides),
      "num_updates": int(final["num_updates"]),
      "noise_multiplier": float(final["noise_multiplier"]),
      "epsilon": float(final["epsilon"]),
      "delta": float(final["delta"]),
      "expected_batch_size": int(training.expected_batch_size),
      # Expected per-example gradients computed (K views each).
      "image_gradients": int(final["num_updates"])
                         * int(training.expected_batch_size)
                         * int(training.augmult),
      "accuracy": {p: float(final[f"{p}/accuracy"]) for p in PARAMS
                   if f"{p}/accuracy" in final},
      # Of this process's last start: a resumed run's is a lower bound.
      "wall_s": wall,
      "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "load_average_1min": common.machine_info()["load_average_1min"],
  }
  curve = read_curve(workdir)
  if len(curve) > 1:
    record["curve"] = curve
  results_dir.mkdir(parents=True, exist_ok=True)
  with open(results_dir / study.runs_file, "a") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")
  best = max(record["accuracy"].items(), key=lambda kv: kv[1])
  log(f"  -> {best[0]} {best[1]:.4f} (T={record['num_updates']}, "
      f"sigma={record['noise_multiplier']:.3f}, {wall:.0f} s)")
  return record


# ----------------------------------------------------------------------------
# Selection and tables (pure functions of the records).


def select(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """Per model, the sweep recipe and params with the best validation accuracy.

  Returns:
    model -> {"overrides", "params", "valid_accuracy", "key"}.
  """
  best: dict[str, dict[str, Any]] = {}
  for record in records:
    if record["stage"] != "sweep":
      continue
    for params, accuracy in record["accuracy"].items():
      current = best.get(record["model"])
      if current is None or accuracy > current["valid_accuracy"]:
        best[record["model"]] = {"overrides": record["overrides"],
                                 "params": params, "valid_accuracy": accuracy,
                                 "key": record["key"]}
  return best


def chosen_params(model: str, selected: Mapping[str, Mapping[str, Any]],
                  select_from: Mapping[str, str],
                  params_chosen: Mapping[str, str]) -> str:
  """The params reported for `model`: chosen on validation by its (or its
  donor's) sweep, else by `params_chosen` (a validation choice made
  elsewhere, e.g. an ablation), else "last"."""
  swept = selected.get(select_from.get(model, model), {}).get("params")
  return swept or params_chosen.get(model, "last")


def _row_label(record: Mapping[str, Any],
               selected: Mapping[str, Mapping[str, Any]],
               select_from: Mapping[str, str]) -> str:
  """The final run's model name, marked when its recipe is not the one the
  sweep selected (e.g. a run made before the sweep): such runs get a row of
  their own instead of counting as seeds of the selected recipe."""
  model = record["model"]
  swept = selected.get(select_from.get(model, model), {}).get("overrides")
  if swept is None:
    return model
  ran = record["overrides"]
  differing = sorted(
      key for key in set(swept) | set(ran)
      if key != "training.num_updates" and swept.get(key) != ran.get(key))
  if not differing:
    return model
  recipe = ", ".join(f"{key}={_text(ran.get(key, 'default'))}"
                     for key in differing)
  return f"{model} (not the swept recipe: {recipe})"


def summarize(records: Iterable[Mapping[str, Any]],
              selected: Mapping[str, Mapping[str, Any]],
              select_from: Mapping[str, str] | None = None,
              params_chosen: Mapping[str, str] | None = None) -> list[dict]:
  """Final runs grouped by (model, eps, number of updates): median and std
  over seeds (runs of another length are another row, never seeds).

  The reported accuracy of a run is that of the params chosen on validation
  for its model (`chosen_params`).
  """
  select_from = select_from or {}
  params_chosen = params_chosen or {}
  groups: dict[tuple[str, float, int, str], list[Mapping[str, Any]]] = {}
  for record in records:
    if record["stage"] == "final":
      label = _row_label(record, selected, select_from)
      groups.setdefault(
          (label, record["eps"], int(record["num_updates"]), record["model"]),
          []).append(record)
  rows = []
  for (label, eps, _, model), runs in sorted(groups.items()):
    params = chosen_params(model, selected, select_from, params_chosen)
    accuracies = [r["accuracy"][params] for r in runs]
    walls = [r["wall_s"] for r in runs]
    rows.append({
        "model": label, "eps": eps, "params": params, "seeds": len(runs),
        "median": statistics.median(accuracies),
        "std": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
        "accuracies": accuracies, "wall_median_s": statistics.median(walls),
        "num_updates": runs[0]["num_updates"],
        "expected_batch_size": runs[0]["expected_batch_size"],
        "noise_multiplier": runs[0]["noise_multiplier"],
        "load_average": max(r.get("load_average_1min") or 0.0 for r in runs),
    })
  return rows


def table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  lines = ["| model | eps | params | test accuracy % (median +- std) | seeds "
           "| T | batch | sigma | wall-clock / run | load |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['eps']:g} | {r['params']} | "
        f"{100 * r['median']:.2f} +- {100 * r['std']:.2f} | {r['seeds']} | "
        f"{r['num_updates']} | {r['expected_batch_size']} | "
        f"{r['noise_multiplier']:.3f} | {r['wall_median_s'] / 60:.1f} min | "
        f"{r['load_average']:.1f} |")
  return "\n".join(lines)


def sweep_markdown(records: Iterable[Mapping[str, Any]]) -> str:
  lines = ["| model | recipe (overrides) | T | " + " | ".join(PARAMS)
           + " | wall-clock |", "|---|---|---|" + "---|" * len(PARAMS) + "---|"]
  for r in records:
    if r["stage"] != "sweep":
      continue
    recipe = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
    accs = " | ".join(f"{100 * r['accuracy'].get(p, math.nan):.2f}"
                      for p in PARAMS)
    lines.append(f"| {r['model']} | {recipe} | {r['num_updates']} | {accs} | "
                 f"{r['wall_s'] / 60:.1f} min |")
  return "\n".join(lines)


def write_table(study: Study, results_dir: pathlib.Path) -> pathlib.Path:
  records = load_records(study, results_dir)
  selected = select(records)
  rows = summarize(records, selected, study.select_from,
                   study.params_chosen)
  machine = common.machine_info()
  text = [
      f"# {study.title} with DP-SGD (from scratch)", "",
      f"Written by `python -m experiments.reproduce.{study.name}` from the "
      f"runs recorded in `{study.runs_file}`. Poisson sampling, PLD "
      "accounting, secret noise and batch randomness; delta as each "
      "record's `delta` (the config's plus the float32 noise's cut tail); "
      "test accuracy on the official test images.", "",
      "Selection caveat: the recipe and the params (last / EMA / Polyak) "
      "are chosen on the validation split, which the final runs then train "
      "on (train_valid). That choice is not covered by the stated epsilon "
      "(common practice, e.g. De et al.; Papernot & Steinke 2022 account "
      "for it).", "",
      common.machine_line(machine), "",
      "## Final runs (train_valid -> test)", "", table_markdown(rows), "",
      "\"load\": the 1-minute load average of the 2-core machine when the "
      "run ended (other work shared the CPU; wall-clocks are upper bounds).",
      "", f"## Sweep (train -> valid, eps = {study.sweep_epsilon:g}, batch "
      f"{study.sweep_batch_size}, T = {study.sweep_updates})", "",
      sweep_markdown(records), "",
      "## Selected recipes", "", "```",
      json.dumps(selected, indent=1, sort_keys=True), "```", "",
  ]
  results_dir.mkdir(parents=True, exist_ok=True)
  (results_dir / study.table_file).write_text("\n".join(text))
  if rows:
    plots.accuracy_vs_epsilon(
        rows, results_dir / study.plot_file,
        title=f"{study.title}, DP-SGD from scratch",
        reference_lines=study.reference_lines)
  plots.accuracy_vs_wallclock(
      [r for r in records
       if r["stage"] == "final" and r["eps"] == study.sweep_epsilon],
      lambda model: chosen_params(model, selected, study.select_from,
                                  study.params_chosen),
      results_dir / study.wallclock_plot_file,
      title=f"{study.title}, eps = {study.sweep_epsilon:g}",
      reference_lines=study.reference_lines)
  return results_dir / study.table_file


def main(study: Study, argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      description=f"{study.title} with DP-SGD: sweep, final runs, table.")
  parser.add_argument("--stage", default="all",
                      choices=("all", "sweep", "final", "table"))
  parser.add_argument("--models", default=",".join(study.models))
  parser.add_argument("--eps", default=",".join(f"{e:g}"
                                                for e in study.epsilons))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--results_dir", default=str(RESULTS_DIR))
  parser.add_argument("--workdir_root",
                      default=f"runs/reproduce_{study.name}")
  args = parser.parse_args(argv)
  results_dir = pathlib.Path(args.results_dir)
  workdir_root = pathlib.Path(args.workdir_root)
  models = args.models.split(",")
  unknown = [m for m in models if m not in study.models]
  if unknown:
    raise SystemExit(
        f"Unknown model(s) {unknown}; use {', '.join(study.models)}.")

  if args.stage in ("all", "sweep"):
    for model in models:
      for recipe in study.sweep.get(model, ({},)):
        execute(study, Run(model, study.sweep_epsilon, 0,
                           tuple(sorted(recipe.items())), "sweep"),
                results_dir=results_dir, workdir_root=workdir_root)
    selected = select(load_records(study, results_dir))
    common.write_json(results_dir / study.selected_file, selected)
  if args.stage in ("all", "final"):
    selected = select(load_records(study, results_dir))
    for seed in (int(s) for s in args.seeds.split(",")):
      for eps in (float(e) for e in args.eps.split(",")):
        for model in models:
          recipe = dict(selected.get(study.select_from.get(model, model),
                                     {}).get("overrides", {}))
          recipe.update(study.final_length.get(model, {}))
          execute(study, Run(model, eps, seed, tuple(sorted(recipe.items())),
                             "final"),
                  results_dir=results_dir, workdir_root=workdir_root)
          write_table(study, results_dir)
  print(f"wrote {write_table(study, results_dir)}")
