"""The plots of `pretrax compare`, as PNG files in OUTPUT/plots/:

  METRIC_vs_step.png     the metric against optimizer steps, a line per run
  METRIC_vs_tokens.png   the same against tokens trained
  METRIC_by_FIELD.png    each run's final (best) metric against a swept config field's values,
                         one file per field that differs between runs (train.seed excepted)

Runs of one configuration share a colour and differ by line style (seeds); the legend names the
configurations. Drawn with matplotlib's Agg canvas on a Figure of our own, never through pyplot,
so no display is needed and a notebook's pyplot backend is left as it was.
"""

import dataclasses
import io
import os

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pretrax.data import files

LINE_STYLES = ("-", "--", ":", "-.")


@dataclasses.dataclass
class Series:
  name: str               # the run
  label: str              # its configuration, for the legend
  group: int              # the configuration's index: its colour
  member: int             # the run's index within its configuration: its line style
  size: int               # runs in the configuration
  steps: list             # x of the curves, one per value
  tokens: list            # tokens trained at each value (None where not logged)
  values: list            # the metric, finite values only
  final: float | None     # the value the run is judged by (best eval, else last)
  fields: dict            # swept config field -> this run's value (train.seed excepted)


def colour(group: int):
  palette = matplotlib.colormaps["tab10" if group < 10 else "tab20"].colors
  return palette[group % len(palette)]


def _new_figure():
  figure = Figure(figsize=(7, 4.5), dpi=100)
  FigureCanvasAgg(figure)
  return figure, figure.add_subplot()


def _save(figure, path: str) -> str:
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  files.atomic_write(path, buffer.getvalue())
  return path


def curves(series: list[Series], metric: str, x: str, path: str) -> str | None:
  """`metric` against `x` ("step" or "tokens"), a line per run; None when no run has a point."""
  figure, ax = _new_figure()
  drawn = False
  for s in series:
    xs = s.steps if x == "step" else s.tokens
    points = [(a, v) for a, v in zip(xs, s.values) if a is not None]
    if not points:
      continue
    label = (s.label if s.size == 1 else f"{s.label} (n={s.size})") if s.member == 0 else None
    marker = "o" if len(points) < 3 else None  # a lone eval point stays visible
    ax.plot(*zip(*points), color=colour(s.group), marker=marker, label=label, alpha=0.85,
            linestyle=LINE_STYLES[s.member % len(LINE_STYLES)], linewidth=1.5)
    drawn = True
  if not drawn:
    return None
  ax.set_title(f"{metric} vs {x}")
  ax.set_xlabel("tokens trained" if x == "tokens" else "step")
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small", title="configuration", title_fontsize="small")
  return _save(figure, path)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def by_field(series: list[Series], metric: str, field: str, path: str) -> str | None:
  """Each run's final `metric` against its value of `field` (points), and the mean per value (a
  marker). x is numeric when every value is a number (log scale when they span 10x or more),
  else categorical in the order seen. None when no run has a final value."""
  scored = [s for s in series if s.final is not None]
  if not scored:
    return None
  values = [s.fields[field] for s in scored]
  numeric = all(_is_number(v) for v in values)
  if numeric:
    positions = {v: float(v) for v in values}
  else:
    positions = {}
    for v in values:
      positions.setdefault(str(v), float(len(positions)))
  key = (lambda v: v) if numeric else str

  figure, ax = _new_figure()
  ax.scatter([positions[key(v)] for v in values], [s.final for s in scored], alpha=0.6,
             color=[colour(s.group) for s in scored], label="runs", zorder=2)
  means = {}
  for v, s in zip(values, scored):
    means.setdefault(key(v), []).append(s.final)
  xs = sorted(means, key=lambda k: positions[k])
  ax.plot([positions[k] for k in xs], [sum(means[k]) / len(means[k]) for k in xs], marker="D",
          markersize=8, color="black", linestyle="-" if numeric else "none", label="mean",
          zorder=3)
  if numeric:
    low, high = min(positions.values()), max(positions.values())
    if low > 0 and high >= 10 * low:
      ax.set_xscale("log")
  else:
    ax.set_xticks(list(positions.values()), list(positions), rotation=20 if
                  max(len(k) for k in positions) > 8 else 0)
    ax.set_xlim(-0.5, len(positions) - 0.5)
  which = "best" if metric.startswith("eval_") else "final"
  ax.set_title(f"{which} {metric} by {field}")
  ax.set_xlabel(field)
  ax.set_ylabel(f"{metric} ({which})")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  return _save(figure, path)


def write_all(series: list[Series], metric: str, directory: str) -> list[str]:
  """Every plot of the module docstring that has data; the paths written."""
  written = [curves(series, metric, x, os.path.join(directory, f"{metric}_vs_{x}.png"))
             for x in ("step", "tokens")]
  fields = list(series[0].fields) if series else []
  written += [by_field(series, metric, field, os.path.join(directory, f"{metric}_by_{field}.png"))
              for field in fields]
  return [path for path in written if path is not None]
