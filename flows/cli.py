"""The ``kd`` command line: the one place where command-line options become configs.

Every subcommand validates its whole config (and, where it can, the dataset
and store) before any expensive work. A :class:`~pipeline.errors.UserError`
prints one line on stderr and exits 2; no traceback is ever shown for it.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys

import flows  # noqa: F401  (sets Prefect's environment defaults before Prefect is imported)
from pipeline.config import (AUGMENT_OPS, DEVICES, ENCODINGS, EXPORT_FORMATS, MODES, OPTIMIZERS, SCHEDULES, SELECTIONS,
                             SOFT_LOSSES, AugmentConfig, DataConfig, DistillConfig, ModelConfig, OptimConfig,
                             TeacherConfig)
from pipeline.errors import UserError
from pipeline.presets import PRESETS

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1


def _default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# ---------------------------------------------------------------- options


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, also for options without a help text."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings:  # argparse skips options without help entirely
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is argparse.SUPPRESS or action.option_strings == [] or "%(default)" in help_text:
            return help_text
        if isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction)):
            return help_text
        return f"{help_text} (default: %(default)s)".strip()


def _data_options(p: argparse.ArgumentParser, required_default: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=_default(DataConfig, "name") if required_default else None,
                   help="digits | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder:PATH"
                   + ("" if required_default else " (default: the dataset the store was written from)"))
    g.add_argument("--data-root", default=_default(DataConfig, "root"), help="where torchvision datasets live")
    g.add_argument("--download", action="store_true", help="allow downloading the dataset (network)")
    g.add_argument("--train-limit", type=int, default=None, help="keep only the first N training samples")
    g.add_argument("--split-seed", type=int, default=_default(DataConfig, "split_seed"))
    g.add_argument("--label-noise", type=float, metavar="RATE",
                   default=_default(DataConfig, "label_noise") if required_default else None,
                   help="flip each train label to a random other class with this probability (val/test stay clean)")
    g.add_argument("--noise-seed", type=int, default=None, help="seed of the label noise (default: the split seed)")


def _model_options(p: argparse.ArgumentParser, arch: str, width: int) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=arch, help="mlp | cnn | any torchvision classifier (resnet18, mobilenet_v3_small…)")
    g.add_argument("--width", type=int, default=width, help="width of the built-in mlp/cnn")


OFF = "off"  # what --clip-grad-norm/--patience take to switch off (kd run: also for the students alone)


def _number_or_off(cast):
    def parse(text: str):
        if text.lower() in (OFF, "none"):
            return OFF
        try:
            return cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number or {OFF!r}: {text!r}") from None

    parse.__name__ = cast.__name__
    return parse


def _on(value):
    return None if value == OFF else value


def _optim_actions(epochs: int) -> list[tuple[str, dict]]:
    """Every OptimConfig option as (flag, argparse kwargs); `kd run` adds a --student-… copy of each."""
    return [
        ("--optimizer", {"default": _default(OptimConfig, "name"), "choices": OPTIMIZERS}),
        ("--lr", {"type": float, "default": _default(OptimConfig, "lr")}),
        ("--momentum", {"type": float, "default": _default(OptimConfig, "momentum")}),
        ("--nesterov", {"action": argparse.BooleanOptionalAction, "default": _default(OptimConfig, "nesterov"),
                        "help": "Nesterov momentum (sgd only)"}),
        ("--weight-decay", {"type": float, "default": _default(OptimConfig, "weight_decay")}),
        ("--epochs", {"type": int, "default": epochs}),
        ("--batch-size", {"type": int, "default": _default(OptimConfig, "batch_size")}),
        ("--schedule", {"default": _default(OptimConfig, "schedule"), "choices": SCHEDULES,
                        "help": "lr schedule, stepped every optimizer step"}),
        ("--step-size", {"type": int, "default": _default(OptimConfig, "step_size"),
                         "help": "step schedule: epochs between decays"}),
        ("--gamma", {"type": float, "default": _default(OptimConfig, "gamma"),
                     "help": "step schedule: lr factor at each decay"}),
        ("--warmup-epochs", {"type": int, "default": _default(OptimConfig, "warmup_epochs"),
                             "help": "linear lr warm-up (onecycle: length of its rising phase; 0: 30%%)"}),
        ("--clip-grad-norm", {"type": _number_or_off(float), "default": OFF,
                              "metavar": "NORM", "help": f"clip the gradients' global L2 norm ({OFF!r}: no clipping)"}),
        ("--patience", {"type": _number_or_off(int), "default": OFF, "metavar": "EPOCHS",
                        "help": f"early stopping: epochs without a better val accuracy ({OFF!r}: never stop)"}),
        ("--select", {"default": _default(OptimConfig, "select"), "choices": SELECTIONS,
                      "help": "checkpoint kept: best on the validation split, or the last epoch"}),
    ]


def _optim_options(p: argparse.ArgumentParser, epochs: int) -> None:
    g = p.add_argument_group("optimisation")
    for flag, kwargs in _optim_actions(epochs):
        g.add_argument(flag, **kwargs)
    g.add_argument("--augment", default="", help=f"comma-separated ops from {', '.join(AUGMENT_OPS)} (empty: none)")
    g.add_argument("--device", default="auto", choices=DEVICES)


def _teacher_options(p: argparse.ArgumentParser) -> None:
    _data_options(p, required_default=True)
    _model_options(p, arch="cnn", width=32)
    _optim_options(p, epochs=20)
    g = p.add_argument_group("teacher")
    g.add_argument("--seed", type=int, default=_default(TeacherConfig, "seed"))
    g.add_argument("--checkpoint", default=None, help="load this teacher instead of training one")
    g.add_argument("--store-root", default=_default(TeacherConfig, "store_root"))
    g.add_argument("--checkpoint-root", default=_default(TeacherConfig, "checkpoint_root"))
    g.add_argument("--encoding", default=_default(TeacherConfig, "encoding"),
                   help=f"how logits are stored: {' | '.join(ENCODINGS)}")
    g.add_argument("--chunk-rows", type=int, default=_default(TeacherConfig, "chunk_rows"),
                   help="samples per compressed chunk (None: a power of two holding about 1 MB of logits)")
    g.add_argument("--shard-chunks", type=int, default=_default(TeacherConfig, "shard_chunks"),
                   help="chunks per shard file (the unit of resumable and concurrent writes)")
    g.add_argument("--views", type=int, default=_default(TeacherConfig, "views"),
                   help="teacher views stored per sample: view 0 clean, the others replayable augmentations")
    g.add_argument("--view-augment", default=",".join(_default(TeacherConfig, "view_augment").ops),
                   help=f"ops the extra views draw from ({', '.join(AUGMENT_OPS)})")
    g.add_argument("--writers", type=int, default=_default(TeacherConfig, "writers"),
                   help="tasks that split the teacher pass into shard-aligned parts (with --runner dask: processes)")
    _storage_option(g)


def _storage_option(g) -> None:
    g.add_argument("--storage-options", type=_json_object, default=None,
                   help='JSON object passed to fsspec for URL stores, e.g. \'{"anon": false}\'')


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _student_options(p: argparse.ArgumentParser) -> None:
    _model_options(p, arch="cnn", width=8)
    _optim_options(p, epochs=30)
    g = p.add_argument_group("distillation grid")
    for flags, kwargs in _student_grid_actions():
        g.add_argument(*flags, **kwargs)


def _runner_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--runner", default="thread", choices=("thread", "dask"),
                   help="where Prefect tasks run: threads here, or a Dask cluster (prefect-dask)")
    g.add_argument("--dask-address", default=None, help="scheduler address (tcp://…); without it, a LocalCluster")
    g.add_argument("--dask-workers", type=int, default=2, help="worker processes of the LocalCluster")


def _data_config(a: argparse.Namespace) -> DataConfig:
    return DataConfig(name=a.dataset, root=a.data_root, download=a.download, split_seed=a.split_seed,
                      train_limit=a.train_limit, label_noise=a.label_noise or 0.0, noise_seed=a.noise_seed)


def _common(a: argparse.Namespace) -> dict:
    return {
        "model": ModelConfig(arch=a.arch, width=a.width),
        "optim": OptimConfig(name=a.optimizer, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay,
                             epochs=a.epochs, batch_size=a.batch_size, schedule=a.schedule, select=a.select,
                             nesterov=a.nesterov, step_size=a.step_size, gamma=a.gamma,
                             warmup_epochs=a.warmup_epochs, clip_grad_norm=_on(a.clip_grad_norm),
                             patience=_on(a.patience)),
        "augment": AugmentConfig(ops=tuple(op for op in a.augment.split(",") if op)),
        "device": a.device,
    }


def teacher_config(a: argparse.Namespace) -> TeacherConfig:
    return TeacherConfig(data=_data_config(a), seed=a.seed, checkpoint=a.checkpoint, store_root=a.store_root,
                         checkpoint_root=a.checkpoint_root, encoding=a.encoding, chunk_rows=a.chunk_rows,
                         shard_chunks=a.shard_chunks, writers=a.writers, views=a.views,
                         view_augment=AugmentConfig(ops=tuple(op for op in a.view_augment.split(",") if op)), storage_options=a.storage_options,
                         **_common(a))


def distill_config(a: argparse.Namespace, store: str) -> DistillConfig:
    data = _data_config(a) if getattr(a, "dataset", None) else None
    if data is None and (a.label_noise is not None or a.noise_seed is not None):
        # Without --dataset the data is rebuilt from the store, noise included: a rate given here would be ignored.
        raise UserError("label_noise", "only applies together with --dataset",
                        "pass --dataset too, or omit it: the store's data already records its label noise")
    if data is None and (a.train_limit is not None or a.download or a.split_seed != _default(DataConfig, "split_seed")):
        raise UserError("dataset", "--train-limit, --split-seed and --download only apply together with --dataset",
                        "pass --dataset too, or omit them: the store records how its data was split")
    return DistillConfig(store=store, data=data, temperatures=tuple(a.temperatures), alphas=tuple(a.alphas),
                         losses=tuple(a.losses), beta=a.beta, seeds=tuple(a.seeds), report_root=a.report_root,
                         run_name=a.run_name, group_size=a.group_size, cache_mb=a.cache_mb,
                         storage_options=a.storage_options, mode=a.mode, workers=a.workers,
                         view_policy=a.view_policy, verify_views=a.verify_views,
                         **_common(a))


def _student_grid_actions() -> list[tuple[tuple[str, ...], dict]]:
    """The grid options shared by `kd distill` and `kd run`."""
    return [
        (("--temperatures",), {"type": float, "nargs": "+", "default": list(_default(DistillConfig, "temperatures"))}),
        (("--alphas",), {"type": float, "nargs": "+", "default": list(_default(DistillConfig, "alphas")),
                         "help": "weight of the soft term; the hard term gets 1 - alpha unless --beta is given"}),
        (("--losses",), {"nargs": "+", "default": list(_default(DistillConfig, "losses")), "choices": SOFT_LOSSES}),
        (("--beta",), {"type": float, "default": None, "help": "independent weight of the hard-label term"}),
        (("--seeds",), {"type": int, "nargs": "+", "default": list(_default(DistillConfig, "seeds"))}),
        (("--report-root",), {"default": _default(DistillConfig, "report_root")}),
        (("--run-name",), {"default": None, "help": "report folder name (default: store, student and time)"}),
        (("--group-size",), {"type": int, "default": _default(DistillConfig, "group_size"),
                             "help": "students per Prefect task; a group shares one pass over the data"}),
        (("--mode",), {"default": _default(DistillConfig, "mode"), "choices": MODES,
                       "help": "offline: soft targets from the store; online: rerun the teacher every step "
                               "(the reference offline KD is measured against)"}),
        (("--view-policy",), {"default": _default(DistillConfig, "view_policy"), "choices": ("uniform", "cycle"),
                              "help": "stores with teacher views: which view each sample trains on per epoch"}),
        (("--verify-views",), {"type": int, "default": _default(DistillConfig, "verify_views"),
                               "help": "rerun the teacher on this many replayed samples first (0: skip)"}),
        (("--workers",), {"type": int, "default": _default(DistillConfig, "workers"),
                          "help": "DataLoader worker processes decoding store chunks (0: one background thread)"}),
        (("--cache-mb",), {"type": float, "default": _default(DistillConfig, "cache_mb"),
                           "help": "hold decoded logits in memory up to this size; stream beyond it"}),
    ]


# ---------------------------------------------------------------- commands


def _finish(state) -> object:
    """The flow's return value, or a one-line failure (exit 1)."""
    if state.is_failed() or state.is_crashed():
        result = state.result(raise_on_failure=False)
        if isinstance(result, UserError):
            raise result
        print(f"error: run failed: {state.message}", file=sys.stderr)
        sys.exit(EXIT_RUN_FAILED)
    return state.result()


def _print_leaderboard(run_dir: str) -> None:
    from pipeline.report import markdown, read_report

    print(markdown(read_report(run_dir)["leaderboard"]))


def runner_config(a: argparse.Namespace):
    from flows.runners import RunnerConfig

    return RunnerConfig(name=a.runner, address=a.dask_address, workers=a.dask_workers)


def task_runner(cfg):
    from flows.runners import task_runner as make

    return make(cfg)


def cmd_teacher(a: argparse.Namespace) -> None:
    from pipeline import teacher

    cfg = teacher_config(a)
    teacher.plan(cfg)  # validates dataset, checkpoint and device before Prefect starts
    from flows.teacher_flow import teacher_flow

    flow = teacher_flow.with_options(task_runner=task_runner(runner_config(a)))
    store = _finish(flow(cfg, return_state=True))
    print(f"store: {store}")


def cmd_distill(a: argparse.Namespace) -> None:
    from pipeline import distill

    cfg = distill_config(a, a.store)
    distill.plan(cfg)  # opens, validates and decodes the store before Prefect starts
    from flows.distill_flow import distill_flow

    flow = distill_flow.with_options(task_runner=task_runner(runner_config(a)))
    run_dir = _finish(flow(cfg, return_state=True))
    _print_leaderboard(run_dir)
    print(f"report: {run_dir}")


def student_namespace(a: argparse.Namespace) -> argparse.Namespace:
    """`kd run`'s options as the students see them: each --student-X given replaces --X."""
    return argparse.Namespace(**{**vars(a), **{k[len("student_"):]: v for k, v in vars(a).items()
                                               if k.startswith("student_")}})


def cmd_run(a: argparse.Namespace) -> None:
    from pipeline import teacher

    t_cfg = teacher_config(a)
    d_cfg = distill_config(student_namespace(a), teacher.plan(t_cfg).store_path)
    from flows.pipeline_flow import kd_pipeline

    if a.generations < 1:
        raise UserError("generations", f"must be >= 1, got {a.generations}", "use 1, or e.g. 3 for born-again KD")
    run_dir = _finish(kd_pipeline(t_cfg, d_cfg, runner_config(a), a.generations, return_state=True))
    _print_leaderboard(run_dir)
    print(f"report: {run_dir}")


def cmd_export(a: argparse.Namespace) -> None:
    from pipeline.export import ExportError, export

    try:
        result = export(a.run_dir, a.run_id, a.format, a.out)
    except ExportError as exc:  # the exporter failed, or its file does not reproduce the student: a failed run
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_RUN_FAILED)
    print(f"exported: {result.path}")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def cmd_inspect(a: argparse.Namespace) -> None:
    from pipeline.store import SoftTargetStore

    store = SoftTargetStore(a.path, storage_options=a.storage_options, require_complete=False)
    info = store.summary()
    if a.verify:
        info["verified_rows"] = store.verify()
    if a.verify_views:
        from pipeline.views import verify_views

        info["verified_views"] = verify_views(store, samples=a.verify_views)
    if a.json:
        print(json.dumps(info, indent=2, default=str))
        return
    t, d = info["teacher"], info["dataset"]
    print(f"store:            {info['path']}")
    print(f"format_version:   {info['format_version']}   complete: {info['complete']}   created: {info['created_at']}")
    print(f"teacher:          {t['arch']} ({t['params']:,} params)  val acc {100 * t['val_acc']:.2f}%  "
          f"test acc {100 * t['test_acc']:.2f}%")
    print(f"checkpoint:       {t['checkpoint']}  sha256 {t['checkpoint_sha256'][:16]}…")
    print(f"dataset:          {d['name']}  {d['num_classes']} classes  input {tuple(d['input_shape'])}")
    for split, n in info["samples"].items():
        print(f"  {split:<5} {n:>7} samples  fingerprint {d['splits'][split]['fingerprint'][:16]}…")
    print(f"encoding:         {info['encoding']}   views per sample: {info['views']}"
          + (f" ({info['logits_bytes_per_view']:.1f} B of logits per view)" if info["views"] > 1 else ""))
    print(f"size:             {_human_bytes(info['bytes_stored'])}  ({info['bytes_per_sample']:.1f} B/sample, "
          f"logits {info['logits_bytes_per_sample']:.1f} B/sample, compression {info['compression_ratio']:.2f}x)")
    print(f"provenance_key:   {info['provenance_key']}")
    for depth, parent in enumerate(info.get("lineage", []), 1):
        print(f"{'lineage:' if depth == 1 else '':<17} {'  ' * (depth - 1)}↳ taught by the student of {parent['store']}"
              f" ({parent['teacher']}, test acc {100 * parent['test_acc']:.2f}%)")
    if a.verify:
        print(f"verified:         every chunk decoded, checksums ok ({info['verified_rows']})")
    if a.verify_views:
        print(f"views verified:   {info['verified_views']}")
    if not info["complete"]:
        print("warning: this store is INCOMPLETE; stage 2 will refuse it", file=sys.stderr)


def cmd_stores(a: argparse.Namespace) -> None:
    from pipeline.store import SoftTargetStore, find_stores

    rows = []
    for path in find_stores(a.root, a.storage_options):
        try:
            s = SoftTargetStore(path, storage_options=a.storage_options, require_complete=False).summary()
        except UserError as exc:
            rows.append({"name": os.path.basename(path), "error": exc.one_line()})
            continue
        rows.append({"name": os.path.basename(path), "path": path, "dataset": s["dataset"]["name"],
                     "teacher": s["teacher"]["arch"], "test_acc": s["teacher"]["test_acc"],
                     "encoding": s["encoding"], "bytes": s["bytes_stored"], "created": s["created_at"],
                     "complete": s["complete"]})
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no stores under {a.root}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<40} unreadable: {r['error']}")
            continue
        print(f"{r['name']:<40} {r['dataset']:<10} {r['teacher']:<12} acc {100 * r['test_acc']:6.2f}%  "
              f"{r['encoding']:<8} {_human_bytes(r['bytes']):>9}  {r['created']}  "
              f"{'complete' if r['complete'] else 'INCOMPLETE'}")


def build_parser() -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(prog="kd", description="Offline knowledge distillation: run the teacher "
                                     "once, distill many students from its stored logits.", formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("teacher", help="train/load the teacher and write its logits to a store", formatter_class=fmt)
    _teacher_options(p)
    _runner_options(p)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("distill", help="train students from a store and report a leaderboard", formatter_class=fmt)
    p.add_argument("--store", required=True, help="store path or URL printed by `kd teacher`")
    _storage_option(p)
    _data_options(p, required_default=False)
    _student_options(p)
    _runner_options(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("run", help="both stages in one Prefect flow (teacher, then distill)", formatter_class=fmt)
    _teacher_options(p)
    g = p.add_argument_group("student (overrides of the teacher's model/optimisation options)")
    g.add_argument("--student-arch", default="cnn")
    g.add_argument("--student-width", type=int, default=8)
    own_defaults = {"--epochs": 30, "--lr": _default(OptimConfig, "lr")}  # the students' own, whatever the teacher's
    for flag, kwargs in _optim_actions(epochs=30):
        # Left out, an option is absent from the namespace (SUPPRESS), so the teacher's value applies.
        kwargs = {**kwargs, "default": own_defaults.get(flag, argparse.SUPPRESS),
                  "help": f"the students' {flag}" + ("" if flag in own_defaults else " (default: the teacher's)")}
        g.add_argument("--student-" + flag[2:], **kwargs)
    for flags, kwargs in _student_grid_actions():
        g.add_argument(*flags, **kwargs)
    g.add_argument("--generations", type=int, default=1,
                   help="sequential (born-again) KD: the best student of each generation teaches the next")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="a named recipe (pipeline/presets.py); explicit options still win")
    _runner_options(p)
    p.set_defaults(func=cmd_run)
    parser.set_defaults(_run_parser=p)

    p = sub.add_parser("inspect", help="a store's metadata, size and compression", formatter_class=fmt)
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true", help="decode every chunk and check every checksum")
    p.add_argument("--verify-views", type=int, default=0, metavar="N",
                   help="rerun the recorded teacher on N replayed samples and compare every view")
    _storage_option(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("stores", help="list the stores under a root", formatter_class=fmt)
    p.add_argument("root", nargs="?", default=_default(TeacherConfig, "store_root"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _storage_option(p)
    p.set_defaults(func=cmd_stores)

    p = sub.add_parser("export", help="export a trained student to TorchScript or ONNX, checked against PyTorch",
                       formatter_class=fmt)
    p.add_argument("run_dir", metavar="RUN_DIR", help="report folder printed by `kd distill` (report: DIR)")
    p.add_argument("run_id", metavar="STUDENT_RUN_ID", help="a run id from its leaderboard.json, e.g. kl-T4-a0.9-s0")
    p.add_argument("--format", default=EXPORT_FORMATS[0], choices=EXPORT_FORMATS,
                   help="onnx needs the onnx package (pip install onnx)")
    p.add_argument("--out", default=None, help="output file (default: RUN_DIR/export/<run id>.pt or .onnx)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        # A preset changes the run parser's defaults, so explicit options parsed again still override it.
        args._run_parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
