"""The leaderboard: per-run rows aggregated over seeds, written as JSON, Markdown and a plot.

Every configuration is reported as mean ± std over its seeds (std is the
sample standard deviation, 0 in the JSON for a single seed, where the tables
show the mean alone). A store with teacher views trains several label-only
students (the recipe's views, the plain recipe, the views without mixing):
the one with the best mean val accuracy is "the baseline" (never chosen on
test), and :func:`baseline_note` says which. A student's gain over the baseline is flagged
``within_noise`` when it is no larger than the two spreads combined,
sqrt(std_student^2 + std_baseline^2); with a single seed on either side the
spread is unknown and there is no verdict (``within_noise`` is None). Each
configuration also shows its parameter count, size in MB (``≈`` when
estimated, as for the teacher, which stage 2 never builds) and CPU latency per
image (``?`` when it was timed on a busy CPU). Under the table,
:func:`teacher_warning` flags a teacher that learnt nothing (at chance, or a
non-finite NLL), and otherwise :func:`gap_note` says when the teacher is too
close to the baseline for any student to show a gain beyond noise. For a
terminal, :func:`leaderboard_text` drops the low-value columns that do not fit
and wraps the note.
"""
from __future__ import annotations

import base64
import json
import math
import os
import statistics
import textwrap
from collections import defaultdict

from pipeline.atomic import write_atomic, write_text_atomic
from pipeline.errors import UserError

METRICS = ("test_acc", "test_nll", "test_ece", "agreement", "val_acc")  # val_acc: what a choice may read
KIND_ORDER = {"teacher": 0, "baseline": 1, "student": 2}


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def leaderboard(rows: list[dict]) -> list[dict]:
    """One entry per configuration: its hyperparameters, mean/std of each metric, seeds and failures."""
    by_config: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_config[r["config_id"]].append(r)
    board = []
    for config_id, runs in by_config.items():
        ok = [r for r in runs if r["status"] == "ok"]
        first = runs[0]
        entry = {k: first.get(k) for k in ("config_id", "kind", "arch", "loss", "temperature", "alpha", "beta")}
        if "data" in first:  # a label-only student of a store with views that sees other data than the views
            entry["data"] = first["data"]
        sized = (ok or runs)[0]
        entry.update({"seeds": len(runs), "failed": len(runs) - len(ok), "params": sized.get("params"),
                      "size_mb": sized.get("size_mb"), "size_mb_estimated": bool(sized.get("size_mb_estimated"))})
        # Every seed of a configuration is the same network, so their latencies measure one thing:
        # the median over seeds damps a run timed while other students were training.
        latencies = [r["latency_ms"] for r in ok if r.get("latency_ms") is not None]
        entry["latency_ms"] = statistics.median(latencies) if latencies else None
        entry["latency_busy"] = any(r.get("latency_busy") for r in ok)
        for m in METRICS:
            entry[f"{m}_mean"], entry[f"{m}_std"] = _mean_std([r[m] for r in ok if r.get(m) is not None])
        if not ok:
            entry["error"] = first.get("error")
        board.append(entry)
    base = _choose_baseline(board)
    for e in board:
        # With several label-only students, each of the others is compared with the chosen one too.
        compared = e["kind"] == "student" or (e["kind"] == "baseline" and e is not base
                                              and bool(base and base.get("reference")))
        if base is not None and compared and not math.isnan(e["test_acc_mean"]):
            e["gain_vs_baseline"] = e["test_acc_mean"] - base["test_acc_mean"]
            noise = math.hypot(e["test_acc_std"], base["test_acc_std"])
            # One seed has no spread: "within noise" (or not) would be a verdict on a std of 0, not on noise.
            spread_known = _scored(e) > 1 and _scored(base) > 1
            e["within_noise"] = abs(e["gain_vs_baseline"]) <= noise if spread_known else None
    board.sort(key=lambda e: (KIND_ORDER[e["kind"]], -(e["test_acc_mean"] if not math.isnan(e["test_acc_mean"])
                                                       else -1.0)))
    return board


def _choose_baseline(board: list[dict]) -> dict | None:
    """The label-only entry "Δ vs base" is measured against (None without one).

    A store without views has one baseline (one per lr of a sweep: the first lr's, as before). With views
    there are several label-only students (:func:`pipeline.grid.store_baselines`: the recipe's views, the
    plain recipe, the views without mixing): the one with the best mean **val** accuracy is the baseline
    (selected on val, never on test; ties go to the first), marked ``reference``; every entry's val accuracy is
    among its metrics (``METRICS``).
    """
    bases = [e for e in board if e["kind"] == "baseline"]
    if not any("data" in e for e in bases):
        return bases[0] if bases else None
    scored = [e for e in bases if not math.isnan(e["val_acc_mean"])] or bases
    base = max(scored, key=lambda e: e["val_acc_mean"] if not math.isnan(e["val_acc_mean"]) else -1.0)
    base["reference"] = True
    return base


def reference_baseline(board: list[dict]) -> dict | None:
    """The baseline of a leaderboard, as :func:`leaderboard` chose it: the entry marked ``reference`` (a store
    with views: the best label-only student on val), else its one baseline; None without one."""
    bases = [e for e in board if e["kind"] == "baseline"]
    return next((e for e in bases if e.get("reference")), bases[0] if bases else None)


def _scored(e: dict) -> int:
    """How many seeds of a leaderboard entry have scores (its mean and std are over these)."""
    return e["seeds"] - e["failed"]


def mean_pm(mean: float, std: float, scale: float = 1.0, digits: int = 2, *, seeds: int = 2) -> str:
    """``mean ± std`` (both times ``scale``) to ``digits`` decimals; the mean alone over a single seed, whose
    spread is unknown; a dash when there is no mean."""
    if math.isnan(mean):
        return "—"
    if seeds < 2:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _fmt(v, spec: str = "g") -> str:
    return "—" if v is None else format(v, spec)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the header, its rule, one line per row (no trailing newline)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def leaderboard_cells(board: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The leaderboard's column names and cells, formatted as the CLI prints them."""
    head = ["config", "loss", "T", "α", "β", "test acc %", "test NLL", "test ECE", "agree %", "Δ vs base", "seeds",
            "params", "size MB", "latency ms"]
    rows = []
    for e in board:
        gain = e.get("gain_vs_baseline")
        delta = "—" if gain is None else f"{gain * 100:+.2f}" + (" (noise)" if e.get("within_noise") else "")
        if e.get("reference"):  # the baseline chosen among several label-only students (baseline_note)
            delta = "base"
        status = f"{e['seeds']}" + (f" ({e['failed']} failed)" if e["failed"] else "")
        n = _scored(e)
        rows.append([
            e["config_id"], e["loss"] or "—", _fmt(e["temperature"]), _fmt(e["alpha"]), _fmt(e["beta"]),
            mean_pm(e["test_acc_mean"], e["test_acc_std"], 100, seeds=n),
            mean_pm(e["test_nll_mean"], e["test_nll_std"], 1, 3, seeds=n),
            mean_pm(e.get("test_ece_mean", math.nan), e.get("test_ece_std", math.nan), 1, 3, seeds=n),
            mean_pm(e["agreement_mean"], e["agreement_std"], 100, seeds=n), delta, status, _fmt(e["params"], ","),
            _size(e), _latency(e)])
    return head, rows


def _latency(e: dict) -> str:
    """Latency in ms; ``?`` marks one timed while the CPU was busy (see pipeline.models.measure_latency)."""
    ms = e.get("latency_ms")
    return "—" if ms is None else format(ms, ".3g") + ("?" if e.get("latency_busy") else "")


BUSY_SHARE = 0.8  # pipeline.models.BUSY_SHARE (this module imports no torch; a test keeps the two equal)
BUSY_NOTE = (f"latency ms?: timed while the CPU was busy (the timing thread got under {BUSY_SHARE:.0%} of a core), "
             "so not comparable across runs; rerun on an idle machine to compare")


def markdown(board: list[dict]) -> str:
    """The leaderboard as a Markdown table (also what the CLI prints)."""
    return markdown_table(*leaderboard_cells(board))


FIRST_COLUMNS = ("config", "test acc %")  # what a reader looks for first, before a wide table scrolls


def table_rows(board: list[dict]) -> list[dict[str, str]]:
    """The leaderboard as one ``{column: cell}`` per configuration, for a UI table (Prefect's table artifact).

    The CLI's columns and formatting, with test accuracy moved next to the config so it is never off-screen.
    Prefect's UI renders each cell as Markdown, where a lone ``-`` (the teacher's loss) is a list bullet: it
    shows as ``—``, like the other cells without a value.
    """
    head, rows = leaderboard_cells(board)
    order = list(FIRST_COLUMNS) + [h for h in head if h not in FIRST_COLUMNS]
    cells = [dict(zip(head, ["—" if c == "-" else c for c in row])) for row in rows]
    return [{h: c[h] for h in order} for c in cells]


def embedded_report(md_path: str, plot_path: str) -> str:
    """The report at ``md_path`` with its link to ``plot_path`` (a relative one, beside it) replaced by the
    image itself as a ``data:`` URI: one self-contained Markdown text.

    A web page (the Prefect UI) may load neither a relative path nor a ``file://`` URL; report.md
    itself keeps its relative link, beside the PNG, for anyone reading the folder.
    """
    with open(md_path) as f:
        text = f.read()
    with open(plot_path, "rb") as f:
        uri = "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")
    return text.replace(f"]({os.path.basename(plot_path)})", f"]({uri})")


# A gap is measurable when a student closing half of it would move at least this many test images.
MIN_HALF_GAP_IMAGES = 2


# A teacher is "at chance" when its test accuracy is within this many binomial standard errors of 1 / classes.
CHANCE_SE = 2.0


def teacher_warning(*, acc: float, nll: float, num_classes: int | None, test_size: int | None) -> str | None:
    """One line when the teacher learnt nothing to distil: a non-finite test NLL, or a test accuracy within
    noise of chance (``CHANCE_SE`` standard errors of 1/classes over ``test_size`` images); else None."""
    if not math.isfinite(nll):
        return (f"warning: the teacher's test NLL is {nll} ({acc * 100:.2f}% accuracy): it did not train; its logits "
                "teach nothing. Retrain it (e.g. lower --lr) before distilling from it.")
    if not num_classes or num_classes < 2 or math.isnan(acc):
        return None
    chance = 1.0 / num_classes
    noise = CHANCE_SE * math.sqrt(chance * (1 - chance) / test_size) if test_size else 0.0
    if acc > chance + noise:
        return None
    fix = "Train it longer (--epochs), lower --lr, or check the data."
    if test_size and acc > chance + 1 / test_size:  # above chance, by less than the noise of so few images
        return (f"warning: the teacher's test accuracy ({acc * 100:.2f}% on {test_size} images, {num_classes} "
                f"classes) cannot be told from chance ({chance * 100:.2f}%) on so few test images: no student "
                "comparison with it means anything. Use more data (a larger test split) to judge it.")
    return (f"warning: the teacher is at chance level ({acc * 100:.2f}% on {num_classes} classes, chance "
            f"{chance * 100:.2f}%; test NLL {nll:,.4g}): it learnt nothing to distil, and no student comparison "
            f"with it means anything. {fix}")


def gap_note(board: list[dict], test_size: int | None) -> str | None:
    """One plain line when the teacher is too close to the baseline for distillation to show, else None.

    Closing half of the teacher-baseline gap is the least a working recipe should show. That half is
    too small to measure when it is no larger than the noise the ``(noise)`` flag uses for a student
    as spread as the baseline (sqrt(2) * baseline std), or when it moves fewer than
    ``MIN_HALF_GAP_IMAGES`` test images (``test_size``: images in the test split, None if unknown).
    """
    teacher = next((e for e in board if e["kind"] == "teacher"), None)
    base = reference_baseline(board)
    if teacher is None or base is None or math.isnan(teacher["test_acc_mean"]) or math.isnan(base["test_acc_mean"]):
        return None
    gap = teacher["test_acc_mean"] - base["test_acc_mean"]
    noise = math.sqrt(2) * base["test_acc_std"]  # 0 for a single seed: only the image count can judge then
    images = "" if not test_size else f" ({gap * test_size:.1f} of {test_size} test images)"
    pointer = "see the fidelity study (`make fidelity`, docs/studies.md) for a setting where it is measurable"
    if gap <= 0:
        return (f"note: the baseline already matches the teacher ({-gap * 100:+.2f} points){images}: there is no gap "
                f"for distillation to close at this size; {pointer}.")
    # Accuracies are counts of images over the test size: the tolerance keeps an exact count of
    # MIN_HALF_GAP_IMAGES (half of 0.94 - 0.90 over 100 images is 1.99999... in floating point) measurable.
    too_few_images = bool(test_size) and gap / 2 * test_size < MIN_HALF_GAP_IMAGES - 1e-9
    if gap / 2 > noise and not too_few_images:
        return None
    why = (f"fewer than {MIN_HALF_GAP_IMAGES} test images" if too_few_images
           else f"within the baseline's seed noise (±{noise * 100:.2f} points)")
    return (f"note: the teacher–baseline gap is {gap * 100:.2f} points{images}; a student closing half of it would "
            f"move {why}, so this run is too small to show what distillation does; {pointer}.")


# What each label-only student of a store with views trains on (pipeline.grid.BASELINE_DATA), for the note.
BASELINE_SEES = {"views": "the recipe's views as stored", "plain": "the clean view 0 alone (the plain recipe)",
                 "nomix": "the recipe's views without their mixing"}


def baseline_note(board: list[dict]) -> str | None:
    """Which label-only student "Δ vs base" is measured against, when there are several (a store with views):
    the best on val, with every one's val accuracy and what it trains on; None with a single baseline."""
    base = reference_baseline(board)
    if base is None or not base.get("reference"):
        return None
    bases = sorted((e for e in board if e["kind"] == "baseline"),
                   key=lambda e: -(e["val_acc_mean"] if not math.isnan(e["val_acc_mean"]) else -1.0))
    scores = ", ".join(f"{e['config_id']} {mean_pm(e['val_acc_mean'], e['val_acc_std'], 100, seeds=_scored(e))}"
                       for e in bases)
    sees = "; ".join(f"{e['config_id']}: {BASELINE_SEES[e.get('data', 'views')]}" for e in bases)
    return (f"Δ vs base: against {base['config_id']}, the best label-only student on val (val acc %: {scores}). "
            f"Label-only students: {sees}.")


def gap_share(entry: dict, baseline: dict, teacher: dict) -> dict:
    """How much of the teacher-baseline gap ``entry`` closes: (entry - baseline) / (teacher - baseline).

    Each argument is a leaderboard entry (``test_acc_mean``/``_std``). ``share_std`` is the entry's
    spread in the same units (its std over the gap); ``within_noise`` marks a gain no larger than the
    entry's and the baseline's spreads combined, the leaderboard's ``(noise)`` rule; ``share_beyond_noise``
    is the share that remains after taking that noise off the gain (0 if none).
    """
    gap = teacher["test_acc_mean"] - baseline["test_acc_mean"]
    gain = entry["test_acc_mean"] - baseline["test_acc_mean"]
    noise = math.hypot(entry["test_acc_std"], baseline["test_acc_std"])
    if gap <= 0:
        return {"gap": gap, "gain": gain, "noise": noise, "share": math.nan, "share_std": math.nan,
                "within_noise": abs(gain) <= noise, "share_beyond_noise": math.nan}
    return {"gap": gap, "gain": gain, "noise": noise, "share": gain / gap, "share_std": entry["test_acc_std"] / gap,
            "within_noise": abs(gain) <= noise, "share_beyond_noise": max(gain - noise, 0.0) / gap}


def share_note(board: list[dict]) -> str | None:
    """The share of the teacher–baseline gap that the best student **on val** closes, with its gain and whether
    that gain is beyond the combined seed spread (the ``(noise)`` rule); None without a gap or a student."""
    teacher = next((e for e in board if e["kind"] == "teacher"), None)
    base = reference_baseline(board)
    students = [e for e in board if e["kind"] == "student" and "gain_vs_baseline" in e
                and not math.isnan(e.get("val_acc_mean", math.nan))]
    if teacher is None or base is None or not students or math.isnan(teacher["test_acc_mean"]):
        return None
    gap = teacher["test_acc_mean"] - base["test_acc_mean"]
    if not gap > 0:
        return None
    best = max(students, key=lambda e: e["val_acc_mean"])  # chosen on val, reported on test
    g = gap_share(best, base, teacher)
    verdict = {True: f"within the combined seed spread (±{g['noise'] * 100:.2f}), so not shown",
               False: f"beyond the combined seed spread (±{g['noise'] * 100:.2f})",
               None: "with one seed, no spread to judge it by"}[best.get("within_noise")]
    return (f"note: the best student on val, {best['config_id']}, closes {100 * g['share']:.0f}% of the "
            f"{g['gap'] * 100:.2f}-point teacher–baseline gap ({g['gain'] * 100:+.2f} points, {verdict}).")


def notes(report: dict) -> list[str]:
    """The lines under a report's table: which baseline "Δ vs base" is against when there are several; a teacher
    that learnt nothing (never called a match), else the gap note, else the share of the gap the best student on val
    closes; and a latency timed on a busy CPU."""
    board, meta = report["leaderboard"], report.get("meta", {})
    teacher = next((e for e in board if e["kind"] == "teacher"), None)
    warning = None if teacher is None else teacher_warning(
        acc=teacher["test_acc_mean"], nll=teacher["test_nll_mean"], num_classes=meta.get("num_classes"),
        test_size=meta.get("test_size"))
    out = [baseline_note(board), warning or gap_note(board, meta.get("test_size")) or share_note(board)]
    if any(e.get("latency_busy") for e in board):
        out.append(BUSY_NOTE)
    return [n for n in out if n]


# Columns left out, in this order, while the table is wider than the terminal: first those the config id
# already spells (kl-T4-a0.9-b0.5), then sizes and the secondary metrics. Config, test accuracy, NLL and the
# gain over the baseline always stay.
NARROW_DROPS = ("loss", "T", "α", "β", "latency ms", "size MB", "params", "seeds", "test ECE", "agree %")


def fit_columns(head: list[str], rows: list[list[str]], width: int) -> tuple[list[str], list[list[str]], list[str]]:
    """The table without the fewest low-value columns (:data:`NARROW_DROPS`) its lines need to fit ``width``."""
    dropped: list[str] = []
    for name in NARROW_DROPS:
        if max(len(line) for line in markdown_table(head, rows).splitlines()) <= width:
            break
        keep = [i for i, h in enumerate(head) if h != name]
        head, rows = [head[i] for i in keep], [[r[i] for i in keep] for r in rows]
        dropped.append(name)
    return head, rows, dropped


NOTE_WIDTH = 100  # the notes' line length where the terminal's width is unknown (a log, a pipe)


def train_rows(meta: dict) -> str:
    """How many train rows the students saw labelled and unlabelled (a report's ``meta``)."""
    if not meta["unlabelled"]:
        return f"train rows: {meta['labelled']}, every one labelled"
    return (f"train rows: {meta['labelled']} labelled, {meta['unlabelled']} unlabelled (students: all of them, "
            f"the unlabelled ones by their soft term alone; baseline: the {meta['labelled']} labelled)")


def leaderboard_text(report: dict, width: int | None = None) -> str:
    """What the CLI prints for a report (as :func:`read_report` returns it): the table, fitted to ``width``
    columns when given (a terminal's; the report files keep every column), and its notes, wrapped."""
    head, rows = leaderboard_cells(report["leaderboard"])
    wrap = max(40, min(width or NOTE_WIDTH, NOTE_WIDTH))
    text = markdown_table(head, rows)
    if width is not None:
        head, rows, dropped = fit_columns(head, rows, width)
        text = markdown_table(head, rows)
        if dropped:
            text += "\n" + textwrap.fill(f"(not shown at this width: {', '.join(dropped)}; see report.md)", wrap)
    for note in notes(report):
        text += "\n\n" + textwrap.fill(note, wrap, break_on_hyphens=False, break_long_words=False)
    if report.get("meta", {}).get("unlabelled"):  # said only where some rows had no label for the students
        text += "\n\n" + textwrap.fill(train_rows(report["meta"]), wrap, break_on_hyphens=False)
    return text


def _size(e: dict) -> str:
    """Model size in MB; ``≈`` marks an estimate from the parameter count (the teacher's)."""
    size = e.get("size_mb")
    if size is None:
        return "—"
    return ("≈" if e.get("size_mb_estimated") else "") + format(size, ".3g")


def plot(board: list[dict], path: str) -> None:
    """Test accuracy against temperature, one line per (loss, α, β), teacher and baseline as references."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines: dict[tuple, list[dict]] = defaultdict(list)
    flat = []  # students whose loss ignores T (logit matching): one level, drawn across every T
    for e in board:
        if e["kind"] == "student" and not math.isnan(e["test_acc_mean"]):
            (flat if e["temperature"] is None else lines[(e["loss"], e["alpha"], e["beta"])]).append(e)
    for (loss, alpha, beta), pts in sorted(lines.items(), key=lambda kv: str(kv[0])):
        pts.sort(key=lambda e: e["temperature"])
        label = f"{loss} α={alpha:g}" + ("" if beta is None else f" β={beta:g}")
        ax.errorbar([e["temperature"] for e in pts], [100 * e["test_acc_mean"] for e in pts],
                    yerr=[100 * e["test_acc_std"] for e in pts], marker="o", capsize=3, label=label)
    for e in flat:
        ax.axhline(100 * e["test_acc_mean"], linestyle="-.", color="tab:purple", alpha=0.7,
                   label=f"{e['config_id']}, T not used ({100 * e['test_acc_mean']:.1f}%)")
    several = any(e.get("reference") for e in board)  # label-only students: named by config id, the others faded
    for e in board:
        if e["kind"] in ("teacher", "baseline") and not math.isnan(e["test_acc_mean"]):
            style = "--" if e["kind"] == "teacher" else ":"
            name, extra = e["kind"], {}
            if several and e["kind"] == "baseline":
                name = e["config_id"] + (", the base" if e.get("reference") else "")
                extra = {"alpha": 1.0 if e.get("reference") else 0.5}
            ax.axhline(100 * e["test_acc_mean"], linestyle=style, color="gray" if e["kind"] == "baseline" else "k",
                       label=f"{name} ({100 * e['test_acc_mean']:.1f}%)", **extra)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("temperature T (log scale)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title("Student accuracy vs distillation temperature")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


LEADERBOARD = "leaderboard.json"


def read_report(run_dir: str) -> dict:
    """What :func:`write_report` saved in ``run_dir``: ``meta``, ``leaderboard`` (aggregated) and ``runs``.

    A file that is not such a report (damaged outside the pipeline, which writes it atomically) is a
    one-line :class:`UserError`, never a traceback.
    """
    path = os.path.join(run_dir, LEADERBOARD)
    try:
        with open(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise UserError("leaderboard", f"{path} is damaged ({type(exc).__name__}: {str(exc)[:120]})",
                        "delete the report folder and rerun") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), t) for k, t in REPORT_KEYS.items()):
        raise UserError("leaderboard", f"{path} is not a report written by `kd distill` (it needs "
                        f"{', '.join(REPORT_KEYS)})", "delete the report folder and rerun")
    return data


REPORT_KEYS = {"meta": dict, "leaderboard": list, "runs": list}


def report_paths(run_dir: str) -> dict[str, str]:
    """The files of a report folder: leaderboard.json, report.md and the plot."""
    return {"json": os.path.join(run_dir, LEADERBOARD), "md": os.path.join(run_dir, "report.md"),
            "plot": os.path.join(run_dir, "accuracy_vs_temperature.png")}


def write_report(run_dir: str, rows: list[dict], meta: dict) -> dict[str, str]:
    """Write accuracy_vs_temperature.png, report.md, then leaderboard.json; return their paths.

    Every file is written atomically, and leaderboard.json last: a folder with a valid one holds a
    finished run, with all its files.
    """
    os.makedirs(run_dir, exist_ok=True)
    board = leaderboard(rows)
    paths = report_paths(run_dir)
    plot(board, paths["plot"])
    failed = [r for r in rows if r["status"] != "ok"]
    md = [f"# Distillation report: {os.path.basename(run_dir)}\n\n",
          f"- store: `{meta.get('store')}`\n- teacher: {meta.get('teacher')}\n- student: {meta.get('student')}\n",
          f"- dataset: {meta.get('dataset')}; checkpoints chosen on **val**, accuracy on **test**, at T = 1\n",
          *([f"- {train_rows(meta)}\n"] if "labelled" in meta else []),
          "- size: float32 parameters and buffers (≈: estimated from the parameter count, the teacher is not "
          "built here); latency: one image on one CPU thread, the fastest of 30 forward passes, timed before "
          "training\n\n",
          markdown(board) + "\n\n"]
    for note in notes({"leaderboard": board, "meta": meta}):
        md.append(note + "\n\n")
    md.append("![accuracy vs temperature](accuracy_vs_temperature.png)\n")
    if failed:
        md.append("\n## Failed runs\n\n" + "\n".join(f"- `{r['run_id']}`: {r.get('error')}" + (
            " (a data or I/O error, not training: rerunning the same command retrains it)" if r.get("retry") else "")
            for r in failed) + "\n")
    write_text_atomic(paths["md"], "".join(md))
    write_text_atomic(paths["json"], json.dumps({"meta": meta, "leaderboard": board, "runs": rows}, indent=2,
                                                default=str))
    return paths
