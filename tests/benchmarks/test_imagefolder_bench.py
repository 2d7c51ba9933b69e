"""Image-folder throughput (``make bench``): the lazy data path on a folder of generated JPEGs.

The folder (``benchlib.image_folder``: 10 classes of 160-px JPEGs) is made once under ``data/bench/``
and reused. What runs on it depends on the device, because a 2-core CPU cannot train at 160 px within
the time ``make bench`` is allowed, while a GPU should be measured at a real resolution:

- **cpu**: 400 images, read at ``--image-size 32`` (decode 160 px, resize), teacher ``cnn`` width 16,
  students ``cnn`` width 8, no DataLoader workers (decoding in the process): on the shared 2-core box
  this was sized on, a spawned 2-worker DataLoader (the workers' start method then) took ~72 s to its
  first batch under load (210 images that take 1.6 s in the process);
- **cuda**: 20,000 images at 160 px, teacher ``resnet18`` (autocast, channels_last, as the pipeline
  runs it), students ``mobilenet_v3_small``, up to 8 workers.

``BENCH_FOLDER_IMAGES`` and ``BENCH_WORKERS`` override the image count and the workers. Every JSON
records the profile it ran. Where all the work runs in this process (the cpu profile), each ratio is
also given in process CPU time (``benchlib.ProcessClock``), which the other processes of a shared
machine disturb far less than wall-clock time. As in ``test_bench.py``: sides timed in interleaved rounds, the median of
per-round ratios, goals reported and never asserted; only sanity (the work was really done) is asserted.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time

import numpy as np
import pytest
import torch

import benchlib as B
from pipeline import teacher
from pipeline.augment import Augmenter
from pipeline.config import AugmentConfig, DataConfig, ModelConfig, OptimConfig, TeacherConfig
from pipeline.data import open_dataset, store_dataset
from pipeline.compat import check_compatible
from pipeline.grid import StudentSpec
from pipeline.loader import SoftTargetLoader
from pipeline.models import count_parameters
from pipeline.names import SPLITS
from pipeline.store import SoftTargetStore, StoreWriter
from pipeline.student_group import student_objective
from pipeline.train import build_seeded, build_trainee, train_one_epoch

DEV = B.device()
CUDA = DEV.type == "cuda"
TRAIN_TRANSFORM = ("random-resized-crop", "hflip")
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    images: int
    size: int  # the JPEGs' side, px
    image_size: int  # what the pipeline reads them at (--image-size)
    teacher: ModelConfig
    student: ModelConfig
    batch: int  # the students' batch (the teacher pass uses the pipeline's own, teacher.PASS_BATCH)
    workers: int


def profile() -> Profile:
    cpus = os.cpu_count() or 1
    if CUDA:
        p = Profile("cuda", images=20_000, size=160, image_size=160, teacher=ModelConfig(arch="resnet18"),
                    student=ModelConfig(arch="mobilenet_v3_small"), batch=256, workers=max(2, min(8, cpus - 2)))
    else:
        p = Profile("cpu", images=400, size=160, image_size=32, teacher=ModelConfig(arch="cnn", width=16),
                    student=ModelConfig(arch="cnn", width=8), batch=128, workers=0)
    env = {k: int(os.environ[v]) for k, v in (("images", "BENCH_FOLDER_IMAGES"), ("workers", "BENCH_WORKERS"))
           if os.environ.get(v)}
    return dataclasses.replace(p, **env)


PROFILE = profile()
IN_PROCESS = not CUDA and PROFILE.workers == 0  # process CPU time then covers all the work


def cpu_figure(name: str, clock: dict[str, list[float]], num: str, den: str, goal: str) -> list[dict]:
    """The ratio num/den in process CPU time, as a contrast (the goal is judged on wall-clock time)."""
    if not IN_PROCESS:
        return []
    r = B.ratio(clock[num], clock[den])
    return [B.figure(f"{name}, in process CPU time", r, goal, None, per_round=B.rounds(clock[num], clock[den]))]


def describe(p: Profile) -> dict:
    return {"profile": p.name, "images": p.images, "jpeg_px": p.size, "image_size": p.image_size,
            "teacher": f"{p.teacher.arch}" + (f" width {p.teacher.width}" if p.teacher.arch in ("cnn", "mlp") else ""),
            "student": f"{p.student.arch}" + (f" width {p.student.width}" if p.student.arch in ("cnn", "mlp") else ""),
            "student_batch": p.batch, "teacher_batch": teacher.PASS_BATCH, "workers": p.workers,
            "gpu": B.gpu_info()}


@dataclasses.dataclass
class Setup:
    root: str
    tmp: str
    plan: teacher.TeacherPlan  # the teacher pass over the folder (a saved random-init teacher, no training)
    model: torch.nn.Module
    store: SoftTargetStore  # one store published by that pass: what stage 2 reads
    stage2: DataConfig  # the folder as stage 2 reads it: the same eval preprocessing, plus train transforms


@pytest.fixture(scope="module")
def setup():
    p = PROFILE
    begun = time.perf_counter()
    root = str(B.image_folder(p.images, p.size))
    made = time.perf_counter() - begun
    tmp = B.tmp_dir("imagefolder")
    data = DataConfig(name=f"imagefolder:{root}", image_size=p.image_size)
    ds = open_dataset(data)
    ckpt = os.path.join(tmp, "teacher.pt")
    torch.save(build_seeded(p.teacher, ds.input_shape, ds.num_classes, seed=0).state_dict(), ckpt)
    cfg = TeacherConfig(data=data, model=p.teacher, checkpoint=ckpt, store_root=os.path.join(tmp, "stores"),
                        checkpoint_root=os.path.join(tmp, "checkpoints"), workers=p.workers, device="auto")
    plan = teacher.plan(cfg)
    model = teacher.load(plan)
    store = SoftTargetStore(teacher.publish(plan, model))
    print(f"\n[bench] image folder {root} ({p.images} images, made or found in {made:.1f} s); profile "
          f"{describe(p)}", flush=True)
    yield Setup(root, str(tmp), plan, model, store,
                dataclasses.replace(data, train_transform=TRAIN_TRANSFORM))
    shutil.rmtree(tmp, ignore_errors=True)


def rates(amount: int, ts: list[float]) -> list[float]:
    return [amount / t for t in ts]


# ---------------------------------------------------------------- a) the teacher pass


def plain_inference(root: str, model: torch.nn.Module, *, image_size: int, workers: int, batch: int) -> int:
    """What a PyTorch user writes: torchvision's ImageFolder + DataLoader, ``model.eval()``, logits to the CPU.

    The same preprocessing, workers and batch as the pipeline, and on CUDA the same precision
    (autocast bf16/fp16, channels_last, pinned memory and non-blocking copies), so the two sides
    differ only in what the pipeline adds: sample ids, file digests, the store. Returns the images read.
    """
    import torchvision
    from torchvision.transforms import v2

    tf = v2.Compose([v2.ToImage(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
                     v2.ToDtype(torch.float32, scale=True)])
    data = torchvision.datasets.ImageFolder(root, transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, num_workers=workers, pin_memory=CUDA)
    fmt = torch.channels_last if CUDA else torch.contiguous_format
    amp = torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
        if CUDA else torch.autocast("cpu", enabled=False)
    model.eval()
    n, outs = 0, []
    with torch.inference_mode(), amp:
        for x, _ in loader:
            out = model(x.to(DEV, non_blocking=CUDA, memory_format=fmt))  # (B, C)
            outs.append(out.float().cpu())
            n += len(x)
    assert sum(len(o) for o in outs) == n == len(data)
    return n


def test_teacher_pass(setup, monkeypatch):
    """``teacher.publish`` (create the store, logits of every split with val/test scored from them, content hash,
    finish) vs a plain torchvision DataLoader + ``model.eval()`` loop over the same folder."""
    begun = B.begin()
    p, s = PROFILE, setup
    n = sum(len(split) for split in s.plan.dataset.splits.values())
    assert n == p.images
    fast_model = teacher.load(s.plan).to(DEV)  # the plain side's own copy, prepared its own way
    if CUDA:
        fast_model = fast_model.to(memory_format=torch.channels_last)

    # Phases of publish, timed by pass-through wrappers around its steps (the real steps run; publish
    # looks them up in its module at call time): taking the lease (the store's files are written inside
    # write_shards, once its reader has started: "store_files"), the logits pass.
    phases: dict[str, list[float]] = {"create_store": [], "store_files": [], "write_shards": []}

    def timed_step(name: str, fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                B.sync()
                phases[name].append(time.perf_counter() - t)
        return run

    monkeypatch.setattr(teacher, "create_store", timed_step("create_store", teacher.create_store))
    monkeypatch.setattr(teacher, "write_shards", timed_step("write_shards", teacher.write_shards))
    monkeypatch.setattr(StoreWriter, "_create", timed_step("store_files", StoreWriter._create))  # once per store
    published: list[str] = []

    def pipeline_pass() -> None:  # the pass alone: each store is checked and removed after the timing
        path = os.path.join(s.tmp, "pass", f"s{len(published)}.zarr")
        published.append(teacher.publish(dataclasses.replace(s.plan, store_path=path), s.model))

    clock = B.ProcessClock()
    times = B.interleaved(clock.wrap({
        "teacher_pass": pipeline_pass,
        "plain": lambda: plain_inference(s.root, fast_model, image_size=p.image_size, workers=p.workers,
                                         batch=teacher.PASS_BATCH)}),
        min_reps=7, max_reps=15, budget_s=120 if CUDA else 60)
    for out in published:  # every pass published a complete store, every split at full size
        store = SoftTargetStore(out)
        assert all(store.size(split) == len(s.plan.dataset.splits[split]) for split in SPLITS)
        shutil.rmtree(out)
    cpu = clock.rounds(len(times["plain"]))
    phases = {k: v[-len(times["plain"]):] for k, v in phases.items()}  # drop the warm-up round
    rest = [t - c - w for t, c, w in zip(times["teacher_pass"], phases["create_store"], phases["write_shards"])]
    rel = B.ratio(times["plain"], times["teacher_pass"])  # throughput of the pass / throughput of the plain loop
    logits = [w - f for w, f in zip(phases["write_shards"], phases["store_files"])]
    logits_only = B.ratio(times["plain"], logits)
    B.record("imagefolder_teacher_pass", [
        B.figure("teacher pass throughput / plain DataLoader loop", rel, "≥ 0.95", rel >= 0.95,
                 per_round=B.rounds(times["plain"], times["teacher_pass"])),
        *cpu_figure("the same", cpu, "plain", "teacher_pass", "≥ 0.95"),
        B.figure("teacher pass", n / B.med(times["teacher_pass"]), "reported", None, " img/s",
                 per_round=rates(n, times["teacher_pass"])),
        B.figure("plain DataLoader + model.eval() loop", n / B.med(times["plain"]), "reported", None, " img/s",
                 per_round=rates(n, times["plain"])),
        B.figure("the logits pass alone (write_shards less the store's files) / plain loop, contrast", logits_only,
                 "—", None, per_round=B.rounds(times["plain"], logits)),
    ], {
        "config": {**describe(p), "images_per_pass": n,
                   "teacher_pass": "teacher.publish: create the store (its files while the workers start), logits of every split (val/test scored from them) "
                                   "(file sha256 digests on the way), content hash, finish",
                   "plain": "torchvision.datasets.ImageFolder + DataLoader(default start method "
                            f"{torch.multiprocessing.get_start_method()!r}), inference_mode, logits to the CPU",
                   "timed": "teacher.publish alone; each published store is opened, checked and removed after "
                            "the timed rounds (before 2026-11-28 afternoon, inside them: ~15 ms a round)",
                   "pipeline_start_method": "forkserver (torch and pipeline.loader preloaded; one DataLoader per pass)",
                   "teacher_params": count_parameters(s.model), "reps": len(times["plain"])},
        "times_s": times, "process_cpu_s": cpu, "phases_s": {**phases, "record_content+finish+rest": rest},
        "median_s": {**{k: B.med(v) for k, v in times.items()}, **{k: B.med(v) for k, v in phases.items()},
                     "record_content+finish+rest": B.med(rest)},
        "spread": {k: B.spread(v) for k, v in times.items()},
        "ratio_of_medians": B.ratio_of_medians(times["plain"], times["teacher_pass"]),
    }, begun)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 8 waiting workers, on purpose
def test_worker_balance():
    """The teacher pass's reader on 8 workers: batches spread over the workers as pieces, against one task per
    batch (what it did before) and a plain DataLoader; reads that wait 1 ms per image, so that scheduling alone
    is timed, on any machine. A 4,000-image pass (splits 2,800 / 600 / 600, batches of 512 that never cross a
    split): 10 batches for 8 workers, so with one task per batch two workers read twice as much."""
    from pipeline.loader import PIECE_ROWS, read_batches, row_batches
    from waiting import WaitingSplit, waiting_split

    begun = B.begin()
    workers, batch = 8, teacher.PASS_BATCH
    splits = {"train": waiting_split(2800), "val": waiting_split(600), "test": waiting_split(600)}
    items = [(name, rows) for name, s in splits.items() for rows in row_batches(np.arange(len(s)), batch)]
    n = sum(len(s) for s in splits.values())

    def reader(piece_rows: int):
        return lambda: sum(len(x) for x, _ in read_batches(splits, items, workers=workers, piece_rows=piece_rows))

    def plain() -> int:  # one split read the way torchvision users do (batch 512, per-sample reads)
        loader = torch.utils.data.DataLoader(waiting_split(n), batch_size=batch, num_workers=workers)
        return sum(len(x) for x, _ in loader)

    times = B.interleaved({"pieces": reader(PIECE_ROWS), "one_task_per_batch": reader(10 ** 9), "plain": plain},
                          min_reps=5, max_reps=9, budget_s=30)
    ideal = n * WaitingSplit.wait_s / workers
    r_old = B.ratio(times["pieces"], times["one_task_per_batch"])
    r_plain = B.ratio(times["pieces"], times["plain"])
    B.record("imagefolder_worker_balance", [
        B.figure(f"pieces of {PIECE_ROWS} rows / one task per batch", r_old, "reported", None,
                 per_round=B.rounds(times["pieces"], times["one_task_per_batch"])),
        B.figure(f"pieces of {PIECE_ROWS} rows / plain DataLoader (batch {batch})", r_plain, "reported", None,
                 per_round=B.rounds(times["pieces"], times["plain"])),
    ], {
        "config": {"workers": workers, "batch": batch, "rows": n, "batches": len(items),
                   "wait_per_image_s": WaitingSplit.wait_s, "ideal_s": ideal,
                   "reps": len(times["pieces"])},
        "times_s": times, "median_s": {k: B.med(v) for k, v in times.items()},
    }, begun)


# ---------------------------------------------------------------- b) stage 2: KD epoch, logits, start-up check


def loader(s: Setup, *, store: SoftTargetStore | None) -> SoftTargetLoader:
    """Stage 2's loader over the folder's train split (train transforms drawn in the workers)."""
    split = open_dataset(s.stage2).splits["train"]
    return SoftTargetLoader(split, PROFILE.batch, seed=0, store=store, cache_mb=1024,
                            chunk_rows=s.store.chunk_rows("train"), workers=PROFILE.workers)


class Epochs:
    """Successive epochs of one loader (with workers, epochs must be read in order) trained by ``trainees``."""

    def __init__(self, loader: SoftTargetLoader) -> None:
        self.loader, self.next = loader, 0
        self.augmenter = Augmenter(AugmentConfig())  # augmentation is the loader's train transforms here
        self.generator = torch.Generator().manual_seed(0)

    def train(self, trainees) -> None:
        train_one_epoch(trainees=trainees, loader=self.loader, epoch=self.next, augmenter=self.augmenter,
                        generator=self.generator, device=DEV)
        self.next += 1
        for t in trainees:
            assert t.failed is None and t.step_losses, t.failed

    def data_only(self) -> int:
        """The epoch's batches read and moved to the device, no model: the work a group shares."""
        n = sum(len(b.to(DEV).y) for b in self.loader.epoch(self.next))
        self.next += 1
        assert n == self.loader.n
        return n


def trainee(s: Setup, spec: StudentSpec, steps: int):
    ds = open_dataset(s.stage2)
    optim = OptimConfig(name="adam", lr=1e-3, epochs=1, batch_size=PROFILE.batch, schedule="none", select="last")
    return build_trainee(name=spec.run_id, objective=student_objective(spec), seed=spec.seed, model_cfg=PROFILE.student,
                         optim=optim, input_shape=ds.input_shape, num_classes=ds.num_classes, device=DEV,
                         steps_per_epoch=steps)


def kd_spec(t: float = 4.0) -> StudentSpec:
    return StudentSpec(loss="kl", temperature=t, alpha=0.9, beta=None, seed=0)


def native_store(s: Setup) -> str:
    """A store the teacher pass wrote from the same folder at native resolution (every header read), with a
    small cnn teacher: only its record of the folder matters here."""
    data = DataConfig(name=f"imagefolder:{s.root}")
    model = ModelConfig(arch="cnn", width=4)
    ds = open_dataset(data)
    ckpt = os.path.join(s.tmp, "native-teacher.pt")
    torch.save(build_seeded(model, ds.input_shape, ds.num_classes, seed=0).state_dict(), ckpt)
    cfg = TeacherConfig(data=data, model=model, checkpoint=ckpt, store_root=os.path.join(s.tmp, "native-stores"),
                        checkpoint_root=os.path.join(s.tmp, "checkpoints"), workers=PROFILE.workers, device="auto")
    plan = teacher.plan(cfg)
    return teacher.publish(plan, teacher.load(plan))


def test_stage2_epoch(setup):
    """A KD epoch from the store ÷ a label-only epoch (same data, same student); reading the stored
    logits and the start-up data check (at --image-size, and at native resolution), each ÷ the KD epoch."""
    begun = B.begin()
    s = setup
    kd_loader, hard_loader = loader(s, store=s.store), loader(s, store=None)
    n = kd_loader.n
    kd = Epochs(kd_loader)
    hard = Epochs(hard_loader)
    kd_t = trainee(s, kd_spec(), len(kd_loader))
    hard_t = trainee(s, StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=0), len(hard_loader))
    path, native_path = s.store.path, native_store(s)
    native_cfg = dataclasses.replace(s.stage2, image_size=None)

    opened = SoftTargetStore(path)

    def read_logits() -> None:  # what stage 2 does once per run (cached) or per epoch (streamed)
        got = opened.read_logits("train")
        assert got.shape == (n, s.store.num_classes) and np.isfinite(got).all()

    def startup_check() -> None:  # a new process: open the store, list the folder (paths, sizes), compare, split
        st = SoftTargetStore(path)
        check_compatible(st, store_dataset(st.meta, s.stage2, cached=False))

    def native_startup_check() -> None:  # the same at native resolution: the size is the store's, no header read
        st = SoftTargetStore(native_path)
        ds = store_dataset(st.meta, native_cfg, cached=False)
        check_compatible(st, ds)
        assert ds.input_shape == (3, PROFILE.size, PROFILE.size)

    clock = B.ProcessClock()
    times = B.interleaved(clock.wrap({
        "kd_epoch": lambda: kd.train([kd_t]), "label_only_epoch": lambda: hard.train([hard_t]),
        "read_logits": read_logits, "startup_check": startup_check, "native_startup_check": native_startup_check}),
        min_reps=9, max_reps=25, budget_s=60)
    cpu = clock.rounds(len(times["kd_epoch"]))
    kd_ratio = B.ratio(times["kd_epoch"], times["label_only_epoch"])
    read = B.ratio(times["read_logits"], times["kd_epoch"])
    check = B.ratio(times["startup_check"], times["kd_epoch"])
    native = B.ratio(times["native_startup_check"], times["kd_epoch"])
    B.record("imagefolder_stage2", [
        B.figure("KD epoch / label-only epoch", kd_ratio, "≤ 1.05", kd_ratio <= 1.05,
                 per_round=B.rounds(times["kd_epoch"], times["label_only_epoch"])),
        *cpu_figure("the same", cpu, "kd_epoch", "label_only_epoch", "≤ 1.05"),
        B.figure("reading the stored train logits / KD epoch", read, "≤ 0.02", read <= 0.02,
                 per_round=B.rounds(times["read_logits"], times["kd_epoch"])),
        *cpu_figure("the same", cpu, "read_logits", "kd_epoch", "≤ 0.02"),
        B.figure("start-up data check / KD epoch", check, "≤ 0.05", check <= 0.05,
                 per_round=B.rounds(times["startup_check"], times["kd_epoch"])),
        *cpu_figure("the same", cpu, "startup_check", "kd_epoch", "≤ 0.05"),
        B.figure("start-up data check at native resolution (no header read) / KD epoch, contrast", native, "—",
                 None, per_round=B.rounds(times["native_startup_check"], times["kd_epoch"])),
        B.figure("KD epoch", n / B.med(times["kd_epoch"]), "reported", None, " img/s",
                 per_round=rates(n, times["kd_epoch"])),
        B.figure("label-only epoch", n / B.med(times["label_only_epoch"]), "reported", None, " img/s",
                 per_round=rates(n, times["label_only_epoch"])),
    ], {
        "config": {**describe(PROFILE), "train": n, "steps_per_epoch": len(kd_loader), "kd": kd_t.name,
                   "train_transform": list(TRAIN_TRANSFORM), "reps": len(times["kd_epoch"]),
                   "loader": "SoftTargetLoader, persistent fork-server workers; KD: store logits cached (float16)",
                   "timed_epoch": "train_one_epoch of one student (no validation)",
                   "read_logits": "read_logits('train') from the store stage 2 opened at start-up",
                   "startup_check": "open the store (metadata, every array's spec) + store_dataset (walk: paths, "
                                    "sizes; compared with the store's listing; split) + check_compatible",
                   "native_startup_check": "the same on a store written at native resolution (a cnn width 4 "
                                           "teacher): the image size taken from the store, no header read "
                                           "(this contrast was 'native_listing', the walk plus every header, "
                                           "before stage 2 stopped reading them)"},
        "times_s": times, "process_cpu_s": cpu, "median_s": {k: B.med(v) for k, v in times.items()},
        "spread": {k: B.spread(v) for k, v in times.items()},
    }, begun)


# ---------------------------------------------------------------- c) shared pass


def test_shared_pass(setup):
    """4 KD students (T = 1, 2, 4, 8) in one pass ÷ the same 4 in separate passes, train transforms on."""
    begun = B.begin()
    s = setup
    epochs = Epochs(loader(s, store=s.store))
    n, steps = epochs.loader.n, len(epochs.loader)
    group = [trainee(s, kd_spec(t), steps) for t in TEMPERATURES]
    alone = [trainee(s, kd_spec(t), steps) for t in TEMPERATURES]

    def separate() -> None:
        for t in alone:
            epochs.train([t])

    clock = B.ProcessClock()
    times = B.interleaved(clock.wrap({"group": lambda: epochs.train(group), "separate": separate,
                                      "data_only": epochs.data_only}),
                          min_reps=5, max_reps=15, budget_s=60)
    cpu = clock.rounds(len(times["group"]))
    r = B.ratio(times["group"], times["separate"])
    data = B.med(times["data_only"])
    per_student = (B.med(times["separate"]) / len(group)) - data  # one student's own work in an epoch
    k = len(group)
    B.record("imagefolder_shared_pass", [
        B.figure("4 students in one pass / 4 separate passes", r, "≤ 0.4", r <= 0.4,
                 per_round=B.rounds(times["group"], times["separate"])),
        *cpu_figure("the same", cpu, "group", "separate", "≤ 0.4"),
        B.figure("one pass, 4 students", k * n / B.med(times["group"]), "reported", None, " student-img/s",
                 per_round=rates(k * n, times["group"])),
        B.figure("separate passes", k * n / B.med(times["separate"]), "reported", None, " student-img/s",
                 per_round=rates(k * n, times["separate"])),
        B.figure("data alone (decode + train transforms + copy)", n / data, "reported", None, " img/s",
                 per_round=rates(n, times["data_only"])),
    ], {
        "config": {**describe(PROFILE), "students": [t.name for t in group], "train": n, "steps_per_epoch": steps,
                   "train_transform": list(TRAIN_TRANSFORM), "reps": len(times["group"]),
                   "loader": "one SoftTargetLoader (persistent fork-server workers) for all three sides"},
        "times_s": times, "process_cpu_s": cpu, "median_s": {k_: B.med(v) for k_, v in times.items()},
        "spread": {k_: B.spread(v) for k_, v in times.items()},
        "analysis": {
            "shared_data_s": data, "per_student_s": per_student, "W_over_D": per_student / data,
            "bound": "without overlap, group/separate = (D + 4W)/(4D + 4W) with D the data epoch and W one "
                     "student's own work; ≤ 0.4 needs W ≤ D/4. Workers overlap D with training, which "
                     "lowers both sides",
            "predicted_ratio_no_overlap": (data + k * per_student) / (k * data + k * per_student),
        },
    }, begun)
