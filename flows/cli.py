"""The ``kd`` command line: the one place where command-line options become configs.

The options are not declared here: they are generated from the config dataclasses
(``pipeline/config.py``, through ``flows/options.py``), so each is defined once.
Every subcommand validates its whole config (and, where it can, the dataset and
store) before any expensive work. A :class:`~pipeline.errors.UserError`, like a
malformed option, prints one line on stderr and exits 2; no traceback is ever
shown for it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from typing import NoReturn

import flows  # noqa: F401  (sets Prefect's environment defaults before Prefect is imported)
from flows import console
from flows.options import Option, add_options, config_options, dests, values
from flows.runners import RunnerConfig, task_runner
from flows.store_commands import add_store_commands
from pipeline.config import DataConfig, DistillConfig, TeacherConfig
from pipeline.config_keys import MASK_OPTIONS
from pipeline.errors import UserError
from pipeline.names import EXPORT_FORMATS
from pipeline.presets import PRESETS, check_preset
from pipeline.serialize import from_dict

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1

TEACHER = config_options(TeacherConfig, group="teacher")
DISTILL = config_options(DistillConfig, group="distillation")
RUNNER = config_options(RunnerConfig, group="execution")
CONSOLE = config_options(console.ConsoleConfig, group="execution")


# The options `kd run` splits between the stages that a user means for the whole run: how long and how fast
# it trains. The plain flag sets both stages; --teacher-X and --student-X set one. The model options stay split
# (--arch is the teacher's, --student-arch the students'): a different, smaller student is what distillation is for.
BOTH_STAGES = (("optim", "epochs"), ("optim", "lr"))


class StageValue(argparse.Action):
    """Stores a stage's own value (--teacher-epochs, --student-lr) and notes that it was given, so that the plain
    flag for both stages, anywhere on the line, leaves it alone (:class:`BothStages`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.stage_given = getattr(namespace, "stage_given", set()) | {self.dest}


class BothStages(argparse.Action):
    """`kd run`'s --epochs and --lr: the value of each stage whose own flag is not given."""

    def __init__(self, *args, stages: tuple[str, ...], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stages = stages

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        for dest in self.stages:
            if dest not in getattr(namespace, "stage_given", set()):
                setattr(namespace, dest, values)


def _stage_value(o: Option, **changes) -> Option:
    return dataclasses.replace(o, kwargs={**o.kwargs, "action": StageValue}, **changes)


def run_teacher_options() -> list[Option]:
    """`kd run`'s teacher options: the teacher's, with ``--teacher-…`` for those the plain flag sets for both stages,
    and help that says, first, which stage a split model option sets."""
    out = []
    for o in TEACHER:
        if o.path in BOTH_STAGES:
            o = _stage_value(o, flag="--teacher-" + o.flag[2:], help=f"the teacher's {o.help}")
        elif not o.inherit:  # the architecture and width: the teacher's; the students' is their own option
            o = dataclasses.replace(o, help=f"the teacher's {o.help} (the students': --student-{o.flag[2:]})")
        out.append(o)
    return out


def run_student_options() -> list[Option]:
    """`kd run`'s options for stage 2 beyond the teacher's, which the students share (data, augmentation, device).

    The students get a ``--student-…`` copy of every model and optimisation option. One left out takes
    the teacher's value, unless its field keeps the students' own default (``inherit=False``).
    """
    own = {"model": "student-", "optim": "student-"}
    shared = {o.dest for o in TEACHER}
    student = "student (overrides of the teacher's model/optimisation options)"
    out = []
    for o in config_options(DistillConfig, group="distillation", prefixes=own, skip=("store",)):
        if o.path[0] in own:
            o = dataclasses.replace(o, group=student, suppress=o.inherit,
                                    default_text="the teacher's" if o.inherit else o.default_text)
        if o.path in BOTH_STAGES:
            o = _stage_value(o)
        if o.dest not in shared:
            out.append(o)
    return out


RUN_TEACHER = run_teacher_options()
STUDENT = run_student_options()


def both_stages_arguments(parser: argparse.ArgumentParser) -> None:
    """`kd run`'s --epochs and --lr: one value for the teacher and the students (see :data:`BOTH_STAGES`)."""
    group = parser.add_argument_group("both stages (teacher and students; --teacher-X or --student-X sets one)")
    for o in TEACHER:
        if o.path in BOTH_STAGES:
            kwargs = {k: v for k, v in o.kwargs.items() if v is not None}
            kwargs.setdefault("metavar", o.dest.upper())
            group.add_argument(o.flag, dest=f"both_{o.dest}", default=argparse.SUPPRESS, action=BothStages,
                               stages=(f"teacher_{o.dest}", f"student_{o.dest}"), **kwargs,
                               help=f"{o.help} of the teacher and the students (default: the teacher "
                                    f"{_default(TEACHER, o.path)}, the students {_default(STUDENT, o.path)})")


def _default(options: list[Option], path: tuple[str, ...]):
    return next(o.default for o in options if o.path == path)


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line with a pointer to ``--help``, not the whole usage.

    Abbreviations are off: ``--epoch 2`` would silently set ``--epochs``, and ``--temperature 4`` would
    set ``--temperatures``; an unknown flag is refused with the closest ones instead (:func:`parse_args`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------- configs


def teacher_config(a: argparse.Namespace) -> TeacherConfig:
    cfg = from_dict(TeacherConfig, values(a, RUN_TEACHER if getattr(a, "command", None) == "run" else TEACHER))
    _check_data_root(cfg.data)
    return cfg


def _check_data_root(data: DataConfig) -> None:
    """A --data-root given for a dataset that reads nothing under it is refused, not silently ignored. (Here, not
    in DataConfig: a store written so records it in its data config, and must stay readable.)"""
    if data.root != DataConfig().root:
        from pipeline.data import check_data_root

        check_data_root(data.name)


def distill_config(a: argparse.Namespace, store: str) -> DistillConfig:
    given = {**values(a, DISTILL), "store": store}
    data = given.get("data", {})
    if data.get("name") is None:  # no --dataset: the store's data, rebuilt as it was written
        if "label_noise" in data or "noise_seed" in data:  # a rate given here would be silently ignored
            raise UserError("label_noise", "only applies together with --dataset",
                            "pass --dataset too, or omit it: the store's data already records its label noise")
        others = [o.flag for o in DISTILL if o.path[0] == "data" and o.path[-1] in data and o.path[-1] != "name"
                  and o.path[-1] not in MASK_OPTIONS]
        if others:
            verb = "apply" if len(others) > 1 else "applies"
            raise UserError("dataset", f"{', '.join(others)} only {verb} together with --dataset",
                            "pass --dataset too, or omit them: the store records how its data was split")
        # The students' labelled rows may be chosen afresh on the store's own data (its train rows are the same;
        # other labels are hidden from the students).
        mask = {k: v for k, v in data.items() if k in MASK_OPTIONS}
        given["data"] = _store_data(store, given.get("storage_options"), mask) if mask else None
    cfg = from_dict(DistillConfig, given)
    if cfg.data is not None:
        _check_data_root(cfg.data)
    return cfg


def _store_data(store: str, storage_options: dict | None, changes: dict) -> dict:
    """The data config a store was written from, as options, with ``changes``; the one mask option given replaces
    the store's other one (--labelled-per-class on a store written with --labelled-fraction)."""
    from pipeline.serialize import to_dict
    from pipeline.store import open_store

    recorded = dataclasses.asdict(open_store(store, storage_options).meta.data_cfg())
    if "labelled_fraction" in changes or "labelled_per_class" in changes:
        recorded.update(labelled_fraction=None, labelled_per_class=None)
    return to_dict(from_dict(DataConfig, {**recorded, **changes}))


def student_namespace(a: argparse.Namespace) -> argparse.Namespace:
    """`kd run`'s options as the students see them: each --student-X given replaces --X."""
    return argparse.Namespace(**{**vars(a), **{k[len("student_"):]: v for k, v in vars(a).items()
                                               if k.startswith("student_")}})


def runner_config(a: argparse.Namespace) -> RunnerConfig:
    return from_dict(RunnerConfig, values(a, RUNNER))


def preset_defaults(name: str) -> dict:
    """A preset's settings as `kd run`'s argparse defaults (its students' section sets the --student-… options)."""
    preset = PRESETS[name]
    return {**dests(preset.get("teacher", {}), RUN_TEACHER), **dests(preset.get("distill", {}), STUDENT)}


# ---------------------------------------------------------------- `kd run`'s errors, by stage


def _preset_value(a: argparse.Namespace, section: str, path: tuple[str, ...]) -> bool:
    """Whether ``--preset``'s ``section`` (teacher, distill) sets the field at ``path``."""
    node = PRESETS[a.preset].get(section, {}) if getattr(a, "preset", None) else {}
    for name in path:
        if not isinstance(node, dict) or name not in node:
            return False
        node = node[name]
    return True


def _run_flags(stage: str) -> dict[tuple[str, ...], str]:
    """The `kd run` flag of every field a stage's config takes, by path: the teacher's own options; the
    students' --student-… options, theirs, and the teacher's they share (data, augmentation)."""
    flags = {o.path: o.flag for o in RUN_TEACHER}
    if stage == "students":
        flags.update({o.path: o.flag for o in STUDENT})
    return flags


def _source(a: argparse.Namespace, stage: str, path: tuple[str, ...]) -> str | None:
    """Where a `kd run` value of ``stage`` came from when not from the command line: a preset or a default."""
    given = getattr(a, "given_flags", set())
    flags = {_run_flags(stage).get(path)} | ({"--" + path[-1].replace("_", "-")} if path in BOTH_STAGES else set())
    if flags & given:
        return None
    if _preset_value(a, "teacher" if stage == "teacher" else "distill", path):
        return f"set by --preset {a.preset}"
    inherited = stage == "students" and not any(o.path == path for o in STUDENT if not o.suppress)
    if inherited and path in {o.path for o in TEACHER}:  # the students follow the teacher's value
        teacher = _source(a, "teacher", path)
        return "the teacher's value" + (f", {teacher}" if teacher else f" ({_run_flags('teacher')[path]})")
    return "the default"


def _rename_flags(text: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        text = re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", new, text)
    return text


@contextlib.contextmanager
def run_stage(a: argparse.Namespace, stage: str) -> Iterator[None]:
    """In `kd run`, a user error of ``stage`` (teacher, students) names the flag and the stage, uses the flags of
    `kd run` (--student-epochs, not --epochs, for a student's), and says where a value not given on the command
    line came from: ``--warmup-epochs (teacher): …, got 1, set by --preset NAME``."""
    try:
        yield
    except UserError as exc:
        base = TEACHER if stage == "teacher" else DISTILL
        flags = _run_flags(stage)
        # The field a config names: its own name (warmup_epochs) or its flag's (dataset, optimizer).
        path = next((o.path for o in base if o.flag == "--" + exc.field.replace("_", "-")), None) or \
            next((o.path for o in base if o.path[-1] == exc.field), None)
        if path is None or path not in flags:
            raise
        given = getattr(a, "given_flags", set())
        # A stage's flag for each field, except where the user set both stages with the plain --epochs or --lr.
        renames = {o.flag: flags[o.path] for o in base if o.path in flags and flags[o.path] != o.flag
                   and not (o.path in BOTH_STAGES and o.flag in given and flags[o.path] not in given)}
        problem = _rename_flags(exc.problem, renames)
        source = _source(a, stage, path)
        if source is not None:
            problem += f", {source}"
        raise type(exc)(f"{flags[path]} ({stage})", problem, _rename_flags(exc.fix, renames)) from None


# ---------------------------------------------------------------- commands


def _run_flow(flow, *args, name: str | None = None) -> object:
    """Run ``flow`` (its module has imported Prefect), as a run named ``name`` when given, and return its
    value; a user error raised inside it is kept off Prefect's console and raised here, for :func:`main`
    to print in one line."""
    console.hide_user_errors()
    if name is not None:
        flow = flow.with_options(flow_run_name=name)
    return _finish(flow(*args, return_state=True))


def _finish(state) -> object:
    """The flow's return value, or a one-line failure (exit 1)."""
    if state.is_failed() or state.is_crashed():
        result = state.result(raise_on_failure=False)
        if isinstance(result, UserError):
            raise result
        print(f"error: run failed: {state.message}", file=sys.stderr)
        sys.exit(EXIT_RUN_FAILED)
    return state.result()


def terminal_width() -> int | None:
    """The columns the leaderboard may fill: ``COLUMNS`` if set, else the terminal's; None for a pipe or a file."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _print_leaderboard(run_dir: str) -> None:
    from pipeline.report import leaderboard_text, read_report

    print(leaderboard_text(read_report(run_dir), terminal_width()))
    print(f"report: {run_dir}")


def _reprint_finished(done: str | None) -> bool:
    """Reprint a finished identical run, found before Prefect starts: a rerun then needs no server."""
    if done is None:
        return False
    print(f"an identical run has finished; not retraining (delete {done} to train it again)", file=sys.stderr)
    _print_leaderboard(done)
    return True


def _say_if_completing(cfg: DistillConfig, identity: dict, baselines: tuple[str, ...]) -> None:
    """One line when the run's folder holds an identical run left unfinished by a data or I/O error."""
    from pipeline import distill, runs

    path = runs.run_dir(cfg)
    kept = runs.kept_rows(path, identity, [s.run_id for s in cfg.students(baselines)])
    if kept is not None:
        print(runs.resume_line(path, kept, distill.groups(cfg, skip={r["run_id"] for r in kept},
                                                          baselines=baselines)))


def _fail_if_unfinished(run_dir: str) -> None:
    """Exit 1, in one line, when students failed from a data or I/O error: the run is not finished (a rerun
    retrains them)."""
    from pipeline.runs import unfinished_note
    from pipeline.report import read_report

    note = unfinished_note(read_report(run_dir)["runs"])
    if note is not None:
        print(f"error: {note}", file=sys.stderr)
        sys.exit(EXIT_RUN_FAILED)


def cmd_teacher(a: argparse.Namespace) -> None:
    from pipeline import teacher

    cfg = teacher_config(a)
    teacher.plan(cfg)  # validates dataset, checkpoint and device before Prefect starts
    from flows.teacher_flow import teacher_flow

    flow = teacher_flow.with_options(task_runner=task_runner(runner_config(a)))
    starting(f"teacher {cfg.model.arch} on {cfg.data.name} ({_epochs(cfg.optim.epochs)})")
    store = _run_flow(flow, cfg)
    print(f"store: {store}")
    _warn_failed_teacher(store, cfg.storage_options)


def _warn_failed_teacher(store: str, storage_options: dict | None) -> None:
    """One line on stderr when the store's teacher learnt nothing (at chance, or a non-finite NLL)."""
    from pipeline.report import teacher_warning
    from pipeline.store import SoftTargetStore

    meta = SoftTargetStore(store, storage_options=storage_options).meta
    test = meta.dataset.splits.get("test")
    warning = teacher_warning(acc=meta.teacher.test_acc, nll=meta.teacher.test_nll,
                              num_classes=meta.dataset.num_classes, test_size=test.size if test else None)
    if warning:
        print(warning, file=sys.stderr)


def cmd_distill(a: argparse.Namespace) -> None:
    from pipeline import distill, runs

    cfg = distill_config(a, a.store)
    if cfg.run_name is not None and _reprint_finished(runs.completed_run(cfg)):
        return
    plan = distill.plan(cfg)  # opens, validates and decodes the store before Prefect starts
    runs.preflight(cfg, data_cfg=plan.data_cfg, provenance_key=plan.store.meta.provenance_key, path=plan.run_dir)
    _say_if_completing(dataclasses.replace(cfg, run_name=os.path.basename(plan.run_dir)), plan.identity(),
                       plan.baselines)
    from flows.distill_flow import distill_flow

    flow = distill_flow.with_options(task_runner=task_runner(runner_config(a)))
    starting(f"{len(plan.students())} {cfg.model.arch} students ({_epochs(cfg.optim.epochs)}) from {cfg.store}")
    run_dir = _run_flow(flow, cfg, name=cfg.run_name)
    _print_leaderboard(run_dir)
    _fail_if_unfinished(run_dir)


def cmd_run(a: argparse.Namespace) -> None:
    from pipeline import distill, runs, teacher
    from pipeline.grid import store_baselines
    from pipeline.store import open_store

    if a.generations < 1:
        raise UserError("generations", f"must be >= 1, got {a.generations}", "use 1, or e.g. 3 for born-again KD")
    with run_stage(a, "teacher"):
        t_cfg = teacher_config(a)
        if a.preset:
            check_preset(a.preset, t_cfg)  # e.g. the patient recipe's minimum views, refused before any work
    with run_stage(a, "students"):
        d_cfg = distill_config(student_namespace(a), "(the teacher's store)")  # every option checked, even run_name
    with run_stage(a, "teacher"):
        t_plan = teacher.plan(t_cfg)  # checkpoint, store and checkpoint roots, dataset, encoding
    d_cfg = dataclasses.replace(d_cfg, store=t_plan.store_path)
    # The store's (distill.baselines_of), known before it is written.
    baselines = store_baselines(t_cfg.views if d_cfg.mode == "offline" else 1, bool(t_cfg.view_mix.ops))
    with run_stage(a, "students"):
        distill.check_views_augment(t_cfg.views, d_cfg.augment)
        if d_cfg.mode == "online" and t_plan.reusable:  # the teacher that online KD reruns is the store's
            distill.load_teacher(open_store(t_plan.store_path, t_cfg.storage_options))
        first = runs.generation_config(t_plan.store_path, d_cfg, 1 if a.generations > 1 else None)
        if a.generations == 1 and t_plan.reusable and _reprint_finished(runs.completed_run(first)):
            return
        # The report folders, before the teacher trains. The first generation's store is known by its
        # provenance key already; a later one's is not, so only its config is compared, and only under a
        # given --run-name (the default name of a later generation comes from a store not written yet).
        for g in range(1, (a.generations if d_cfg.run_name else 1) + 1):
            cfg = runs.generation_config(t_plan.store_path, d_cfg, g if a.generations > 1 else None)
            runs.preflight(cfg, data_cfg=d_cfg.data or t_cfg.data,
                              provenance_key=t_plan.provenance_key if g == 1 else None)
            if g == 1:
                _say_if_completing(cfg, runs.run_identity(cfg, data_cfg=d_cfg.data or t_cfg.data,
                                                             provenance_key=t_plan.provenance_key), baselines)
    from flows.pipeline_flow import kd_pipeline

    teacher_part = f"teacher {t_cfg.model.arch} on {t_cfg.data.name}"
    teacher_part = f"the finished store of the {teacher_part}" if t_plan.reusable else \
        f"{teacher_part} ({_epochs(t_cfg.optim.epochs)})"
    starting(f"{teacher_part}, then {len(d_cfg.students(baselines))} {d_cfg.model.arch} students "
             f"({_epochs(d_cfg.optim.epochs)})")
    name = first.run_name.removesuffix("-gen1")
    run_dir = _run_flow(kd_pipeline, t_cfg, d_cfg, runner_config(a), a.generations, name=name)
    _print_leaderboard(run_dir)
    _fail_if_unfinished(run_dir)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def starting(what: str) -> None:
    """One line on stderr, at once, before Prefect starts (its temporary server alone takes seconds), saying what
    does: the terminal is never blank while nothing seems to happen."""
    print(f"starting: {what}", file=sys.stderr, flush=True)


def cmd_export(a: argparse.Namespace) -> None:
    from pipeline.export import ExportError, export

    try:
        result = export(a.run_dir, a.run_id, a.format, a.out)
    except ExportError as exc:  # the exporter failed, or its file does not reproduce the student: a failed run
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_RUN_FAILED)
    print(f"exported: {result.path}")


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The `kd` parser; ``preset`` names a recipe whose settings become `kd run`'s defaults."""
    parser = Parser(prog="kd", description="Offline knowledge distillation: run the teacher once, distill many "
                                           "students from its stored logits.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("teacher", help="train/load the teacher and write its logits to a store")
    add_options(p, TEACHER + RUNNER + CONSOLE)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("distill", help="train students from a store and report a leaderboard")
    add_options(p, DISTILL + RUNNER + CONSOLE)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("run", help="both stages in one Prefect flow (teacher, then distill)",
                       description="Both stages in one Prefect flow: train the teacher and write its store, then "
                                   "distill the students from it. --epochs and --lr set both stages "
                                   "(--teacher-epochs, --student-epochs, --teacher-lr, --student-lr set one); "
                                   "--arch and --width are the teacher's, --student-arch and --student-width the "
                                   "students'. Other model and optimisation options are the teacher's, and the "
                                   "students follow them unless given their --student-… copy.")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="a named recipe (pipeline/presets.py); explicit options still win")
    p.add_argument("--generations", type=int, default=1, help="sequential (born-again) KD: the best student of "
                   "each generation teaches the next (default: %(default)s)")
    both_stages_arguments(p)
    add_options(p, RUN_TEACHER + STUDENT + RUNNER + CONSOLE)
    p.set_defaults(func=cmd_run, **(preset_defaults(preset) if preset else {}))

    add_store_commands(sub)

    p = sub.add_parser("export", help="export a trained student to TorchScript or ONNX, checked against PyTorch")
    p.add_argument("run_dir", metavar="RUN_DIR", help="report folder printed by `kd distill` (report: DIR)")
    p.add_argument("run_id", metavar="STUDENT_RUN_ID", help="a run id from its leaderboard.json, e.g. kl-T4-a0.9-s0")
    p.add_argument("--format", default=EXPORT_FORMATS[0], choices=EXPORT_FORMATS,
                   help="onnx needs the onnx package (pip install onnx) (default: %(default)s)")
    p.add_argument("--out", default=None, help="output file (default: RUN_DIR/export/<run id>.pt or .onnx)")
    p.set_defaults(func=cmd_export)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(build_parser(), argv)
    if getattr(args, "preset", None):
        # The preset's settings become defaults, so the options given explicitly, parsed again, still win.
        args = _parse(build_parser(args.preset), argv)
    # The flags given (abbreviations are off, so each is spelt out): which values are the user's, not a
    # preset's or a default (see run_stage).
    args.given_flags = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return args


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, refusing an unknown option with the closest known ones and a pointer to the
    subcommand's own --help."""
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    flag = next((e.split("=", 1)[0] for e in extra if e.startswith("-")), None)
    if flag is None:
        sub.error(f"unexpected argument {extra[0]!r}")
    known = [s for action in sub._actions for s in action.option_strings]
    # The flags it begins (what abbreviation would pick silently), else near misses (a typo).
    close = [k for k in known if k.startswith(flag)][:3] or difflib.get_close_matches(flag, known, n=3, cutoff=0.75)
    sub.error(f"unknown option {flag}" + (f"; did you mean {' or '.join(close)}?" if close else ""))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Before any flow runs: Prefect reads its console level when it first sets up logging.
    console.apply(from_dict(console.ConsoleConfig, values(args, CONSOLE)))
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
