"""Performance benchmarks (``make bench``): each case reports ratios against its goal, never asserts the goal.

Sized for a 2-core CPU (the whole file runs in well under 15 minutes there),
with one torch thread on a CPU unless ``BENCH_THREADS`` says otherwise (see
``benchlib.configure_threads``); on a GPU the same code runs on
``resolve_device("auto")``. Every timed pair is interleaved (A, B, A, B, ...)
and reduced with the median of per-round ratios; see ``benchlib``.
Only sanity is asserted (finite positive timings, the work really done), so a
missed goal is data in ``data/bench/<case>.json``, not a failure.
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch
from numcodecs import Blosc

import benchlib as B
from pipeline.augment import Augmenter
from pipeline.config import AugmentConfig, ModelConfig, OptimConfig
from pipeline.grid import StudentSpec
from pipeline.data import Split
from pipeline.loader import SoftTargetLoader, fits_cache
from pipeline.losses import distillation_loss
from pipeline.models import build_model, count_parameters
from pipeline.store import SoftTargetStore, StoreWriter, layout_for
from pipeline.optim import make_optimizer
from pipeline.student_group import fit_group, student_objective
from pipeline.train import build_seeded, build_trainee, predict, train_one_epoch
from tests.conftest import synthetic_provenance

DEV = B.device()
STUDENT = ModelConfig(arch="cnn", width=16)  # small on purpose: any per-step overhead shows
BATCH = 128
VAL = 128  # validation samples: fit_group evaluates every student on them after each epoch
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


def optim(epochs: int = 1) -> OptimConfig:
    return OptimConfig(name="adam", lr=1e-3, epochs=epochs, batch_size=BATCH, schedule="none", select="last")


def kd_specs(temperatures=TEMPERATURES) -> list[StudentSpec]:
    return [StudentSpec(loss="kl", temperature=t, alpha=0.9, beta=None, seed=0) for t in temperatures]


def random_logits(n: int, classes: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0.0, 3.0, size=(n, classes))).astype(np.float32)


def train(specs, loader, val, augment=AugmentConfig(), teacher=None, epochs: int = 1):
    results = fit_group(specs, model_cfg=STUDENT, optim=optim(epochs), augment=augment, loader=loader, val=val,
                        input_shape=B.SHAPE, num_classes=B.CLASSES, device=DEV, teacher=teacher)
    assert all(r.failed is None for r in results), [r.failed for r in results]
    return results


def teacher_pass(model: torch.nn.Module, split: Split, classes: int, path: str | None,
                 phases: dict[str, list[float]] | None = None) -> None:
    """What ``pipeline.teacher.publish`` does for one split: predict shard by shard, ``put`` each to the writer.

    ``path=None`` runs the same inference, shard by shard, without a store. ``phases`` collects the
    seconds spent creating the store (``StoreWriter(...)``) and in ``finish()`` (draining the queue,
    checking the flags, marking it complete).
    """
    writer = None
    t = time.perf_counter()
    if path is not None:
        writer = StoreWriter(path, synthetic_provenance(classes),
                             {"train": (split.y.numpy(), split.ids.numpy())}, encoding="float16")
    created = time.perf_counter()
    lay = writer.layouts["train"] if writer else layout_for(len(split), classes)
    try:
        for shard in range(lay.num_shards):
            a, b = lay.shard_range(shard)
            logits = torch.cat(list(predict(model, split.batch(np.arange(a, b)), DEV))).numpy()  # (rows, C)
            if writer is not None:
                writer.put("train", shard, logits)
        inferred = time.perf_counter()
        if writer is not None:
            writer.finish()
        if phases is not None:
            phases.setdefault("create", []).append(created - t)
            phases.setdefault("finish", []).append(time.perf_counter() - inferred)
    finally:
        if writer is not None:
            writer.abort()


@pytest.fixture
def tmp():
    path = B.tmp_dir("bench")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cached_loader(path, n: int):
    """Synthetic train/val splits, a store of random logits for the train split, and a cached loader over it."""
    train_split, val = B.synthetic_split(n, seed=0), B.synthetic_split(VAL, seed=1)
    store = B.write_store(path, random_logits(n, B.CLASSES, 0), train_split.y.numpy())
    return train_split, val, SoftTargetLoader(train_split, BATCH, seed=0, store=store, cache_mb=1024)


# ---------------------------------------------------------------- a) store overhead


def test_store_overhead(tmp):
    """Epoch with the KD loss from the store ÷ the same epoch on labels only, same loader (cache on)."""
    begun = B.begin()
    n = 1024
    train_split, val, loader = cached_loader(tmp / "a.zarr", n)
    assert fits_cache(n, B.CLASSES, 1024), "the store should be cached in memory"
    kd = StudentSpec(loss="kl", temperature=4.0, alpha=0.9, beta=None, seed=0)
    hard = StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=0)
    times = B.interleaved({"kd": lambda: train([kd], loader, val), "hard": lambda: train([hard], loader, val)},
                          min_reps=9, max_reps=41, budget_s=50)
    r = B.ratio(times["kd"], times["hard"])
    B.record("store_overhead", [B.figure("kd_epoch / hard_epoch", r, "≤ 1.05", r <= 1.05,
                                         per_round=B.rounds(times["kd"], times["hard"]))], {
        "config": {"student": f"{STUDENT.arch} width {STUDENT.width}", "params": count_parameters(
            build_model(STUDENT, B.SHAPE, B.CLASSES)), "train": n, "val": VAL, "batch": BATCH,
            "steps_per_epoch": len(loader), "reps": len(times["kd"]), "kd": kd.run_id,
            "loader": "store, cache on (float16)",
            "timed": "one fit_group call of 1 epoch (build, epoch, val evaluation, checkpoint copy)"},
        "ratio_of_medians": B.ratio_of_medians(times["kd"], times["hard"]),
        "times_s": times, "median_s": {k: B.med(v) for k, v in times.items()},
        "spread": {k: B.spread(v) for k, v in times.items()},
    }, begun)


# ---------------------------------------------------------------- b) sweep vs online


def test_sweep_vs_online(tmp):
    """4 students (T = 1, 2, 4, 8) from the store in one group vs the same 4 with a resnet18 teacher run every step."""
    begun = B.begin()
    n = 512
    train_split, val = B.synthetic_split(n, seed=0), B.synthetic_split(VAL, seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = build_model(ModelConfig(arch="resnet18"), B.SHAPE, B.CLASSES).to(DEV).eval()
    specs = kd_specs()
    labels_only = SoftTargetLoader(train_split, BATCH, seed=0)
    written: list[str] = []

    def write_store() -> None:  # the one teacher pass of offline KD
        path = str(tmp / f"b{len(written)}.zarr")
        teacher_pass(teacher, train_split, B.CLASSES, path)
        written.append(path)

    def offline() -> None:  # from the store just written, opened and cached like stage 2 does
        store = SoftTargetStore(written[-1])
        train(specs, SoftTargetLoader(train_split, BATCH, seed=0, store=store, cache_mb=1024), val)

    def online() -> None:
        train(specs, labels_only, val, teacher=teacher)

    # The ideal, over the same batches (the whole epoch): 4 student steps vs the same plus one teacher forward.
    batches = [b.to(DEV) for b in labels_only.epoch(0)]
    students = [build_seeded(STUDENT, B.SHAPE, B.CLASSES, seed=0).to(DEV).train() for _ in specs]
    opts = [make_optimizer(m.parameters(), optim()) for m in students]
    stored = torch.from_numpy(random_logits(BATCH, B.CLASSES, 1)).to(DEV)  # stands in for stored logits

    def steps(with_teacher: bool) -> None:
        for b in batches:
            if with_teacher:
                with torch.no_grad():
                    soft = teacher(b.x).float()
            else:
                soft = stored[:len(b.y)]
            for m, opt, spec in zip(students, opts, specs):
                loss = distillation_loss(m(b.x), soft, b.y, spec.loss, spec.temperature, spec.alpha, spec.beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                float(loss.detach())  # fit_group reads every loss too

    # warm the ideal's loop once, then time: teacher pass (+ store), offline, online, steps, steps+teacher
    steps(True)
    times = B.interleaved({"teacher_pass": write_store, "offline": offline, "online": online,
                           "student_steps": lambda: steps(False), "student_steps+teacher": lambda: steps(True)},
                          min_reps=6, max_reps=15, budget_s=110, warmup=0)
    speedup = B.ratio(times["online"], times["offline"])
    ideal = B.ratio(times["student_steps+teacher"], times["student_steps"])
    offline_total = [t + o for t, o in zip(times["teacher_pass"], times["offline"])]
    speedup_total = B.ratio(times["online"], offline_total)
    speedup_rounds = B.rounds(times["online"], times["offline"])
    ideal_rounds = B.rounds(times["student_steps+teacher"], times["student_steps"])
    relative = speedup / ideal  # the two medians; the per-round quotients below give its spread
    # What the two fit_group calls spend outside the ideal's per-batch work (store open and cache, model
    # builds, the val evaluation, checkpoint copies, batch assembly): the gap between speed-up and ideal.
    steps_per_epoch = len(labels_only)
    per_batch = {k: B.med(times[k]) / len(batches) for k in ("student_steps", "student_steps+teacher")}
    overhead = {"offline": B.med([a - b for a, b in zip(times["offline"], times["student_steps"])]),
                "online": B.med([a - b for a, b in zip(times["online"], times["student_steps+teacher"])])}
    tp, off, on = (B.med(times[k]) for k in ("teacher_pass", "offline", "online"))
    B.record("sweep_vs_online", [
        B.figure("speed-up online/offline", speedup, f"≥ 0.9 × ideal = {0.9 * ideal:.2f}", speedup >= 0.9 * ideal,
                 "×", per_round=speedup_rounds),
        B.figure("ideal (4 steps + teacher fwd)/(4 steps)", ideal, "reference", None, "×", per_round=ideal_rounds),
        B.figure("speed-up / ideal", relative, "≥ 0.9", relative >= 0.9,
                 per_round=[a / b for a, b in zip(speedup_rounds, ideal_rounds)]),
        B.figure("speed-up incl. the teacher pass (1 epoch)", speedup_total, "reported", None, "×",
                 per_round=B.rounds(times["online"], offline_total)),
    ], {
        "config": {"students": [s.run_id for s in specs], "student": f"{STUDENT.arch} width {STUDENT.width}",
                   "teacher": "resnet18 (random init, CIFAR stem)", "teacher_params": count_parameters(teacher),
                   "train": n, "val": VAL, "batch": BATCH, "epochs": 1, "steps": steps_per_epoch,
                   "reps": len(times["online"]),
                   "offline": "open store + cache + fit_group(4 specs)",
                   "online": "fit_group(4 specs, teacher=resnet18), label-only loader",
                   "teacher_pass": "predict + StoreWriter.put per shard + finish (train split, float16)"},
        "ratio_of_medians": {"speed-up": B.ratio_of_medians(times["online"], times["offline"]),
                             "ideal": B.ratio_of_medians(times["student_steps+teacher"], times["student_steps"])},
        "times_s": {**times, "offline_total": offline_total},
        "median_s": {**{k: B.med(v) for k, v in times.items()}, "offline_total": B.med(offline_total)},
        "spread": {k: B.spread(v) for k, v in times.items()},
        "analysis": {
            "per_batch_s": per_batch,
            "outside_the_steps_s": overhead,
            "outside_the_steps_share": {"offline": overhead["offline"] / off, "online": overhead["online"] / on},
            # projection from the medians: the teacher pass is paid once, online pays the teacher every epoch
            "projected_speedup_incl_teacher_pass": {e: e * on / (tp + e * off) for e in (1, 10, 30)},
        },
    }, begun)


# ---------------------------------------------------------------- c) shared pass


def test_shared_pass(tmp):
    """4 students in one group (one data pass) ÷ 4 single-student runs, augmentation on."""
    begun = B.begin()
    n = 512
    train_split, val, loader = cached_loader(tmp / "c.zarr", n)
    augment = AugmentConfig(ops=("translate", "flip"))
    specs = kd_specs()
    augmenter = Augmenter(augment)

    def data_only() -> None:  # what a group shares: loading and augmenting each batch once
        gen = torch.Generator().manual_seed(0)
        for b in loader.epoch(0):
            augmenter(b.x, gen).to(DEV)

    def separate() -> None:
        for s in specs:
            train([s], loader, val, augment)

    times = B.interleaved({"group": lambda: train(specs, loader, val, augment), "separate": separate,
                           "data_only": data_only}, min_reps=7, max_reps=25, budget_s=50)
    r = B.ratio(times["group"], times["separate"])
    data = B.med(times["data_only"])
    per_student = (B.med(times["group"]) - data) / len(specs)
    B.record("shared_pass", [B.figure("group / separate", r, "≤ 0.75", r <= 0.75,
                                      per_round=B.rounds(times["group"], times["separate"]))], {
        "config": {"students": [s.run_id for s in specs], "student": f"{STUDENT.arch} width {STUDENT.width}",
                   "augment": list(augment.ops), "train": n, "val": VAL, "batch": BATCH, "epochs": 1,
                   "steps": len(loader), "reps": len(times["group"]), "loader": "store, cache on (float16)"},
        "ratio_of_medians": B.ratio_of_medians(times["group"], times["separate"]),
        "times_s": times, "median_s": {k: B.med(v) for k, v in times.items()},
        "spread": {k: B.spread(v) for k, v in times.items()},
        "analysis": {
            "shared_data_s": data, "per_student_s": per_student,
            "bound": "group/separate = (D + 4W)/(4D + 4W) with D the shared data+augmentation epoch and W one "
                     "student's own epoch; ≤ 0.75 needs W ≤ 2D",
            "W_over_D": per_student / data,
            "predicted_ratio": (data + 4 * per_student) / (4 * data + 4 * per_student),
        },
    }, begun)


# ---------------------------------------------------------------- e) batched students


# Train samples per epoch in the batched cases: 4 steps on a CPU (time), 32 on a GPU, where the 4 steps the
# first H100 figures used were about as long as the per-student work around them (build, probe, validation).
BATCHED_TRAIN = 512 if DEV.type == "cpu" else 4096


def batched_case(tmp, *, case: str, model: ModelConfig, n: int, sizes=(4, 8), min_reps: int = 3,
                 budget_s: float = 40, training_only_sides: bool = True) -> None:
    """A batched group of S ÷ S separate runs (S = 4, 8), and ÷ the same S in one per-student group.

    Batching is forced on (``batched=True``) so the stacked engine is measured even where the
    automatic rule would not pick it (on a CPU, students above ``CPU_MAX_FLOPS``); the automatic
    decision is recorded next to the figures.
    """
    from pipeline.stacking.cost import CPU_MAX_FLOPS, flops_per_sample

    begun = B.begin()
    train_split, val, loader = cached_loader(tmp / f"{case}.zarr", n)
    temperatures = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)

    def run(specs, batched):
        results = fit_group(specs, model_cfg=model, optim=optim(), augment=AugmentConfig(), loader=loader, val=val,
                            input_shape=B.SHAPE, num_classes=B.CLASSES, device=DEV, batched=batched)
        assert all(r.failed is None for r in results), [r.failed for r in results]

    sides = {}
    for size in sizes:
        specs = kd_specs(temperatures[:size])
        sides[f"batched{size}"] = lambda specs=specs: run(specs, True)
        sides[f"separate{size}"] = lambda specs=specs: [run([s], False) for s in specs]
        sides[f"loop{size}"] = lambda specs=specs: run(specs, False)
        if training_only_sides:  # training alone (no build, probe, validation): what a stacked step buys
            stack, alone = training_only(model, specs, loader)
            sides[f"stacked_epoch{size}"] = stack
            sides[f"alone_epochs{size}"] = alone
    times = B.interleaved(sides, min_reps=min_reps, max_reps=max(min_reps, 15), budget_s=budget_s)
    goals = {4: 0.5, 8: 0.3}
    figures = []
    for size in sizes:
        r = B.ratio(times[f"batched{size}"], times[f"separate{size}"])
        figures.append(B.figure(f"batched {size} / {size} separate", r, f"≤ {goals[size]}", r <= goals[size],
                                per_round=B.rounds(times[f"batched{size}"], times[f"separate{size}"])))
        r = B.ratio(times[f"batched{size}"], times[f"loop{size}"])
        figures.append(B.figure(f"batched {size} / per-student group of {size}", r, "reported", None,
                                per_round=B.rounds(times[f"batched{size}"], times[f"loop{size}"])))
        if not training_only_sides:
            continue
        r = B.ratio(times[f"stacked_epoch{size}"], times[f"alone_epochs{size}"])
        figures.append(B.figure(f"training only: stacked epoch of {size} / {size} one-student epochs", r,
                                "reported", None,
                                per_round=B.rounds(times[f"stacked_epoch{size}"], times[f"alone_epochs{size}"])))
    flops = flops_per_sample(build_model(model, B.SHAPE, B.CLASSES), B.SHAPE)
    B.record(case, figures, {
        "config": {"student": f"{model.arch} width {model.width}", "train": n, "val": VAL, "batch": BATCH,
                   "epochs": 1, "steps": len(loader), "reps": len(times[f"batched{sizes[0]}"]),
                   "loader": "store, cache on (float16)", "optimizer": "adam, no schedule",
                   "separate": "each student alone in its own fit_group (the per-student loop)",
                   "loop": "the same students in one per-student group (batched=False)"},
        "flops_per_sample": flops,
        "automatic_choice": "batched" if DEV.type == "cuda" or flops <= CPU_MAX_FLOPS else "per-student loop",
        "ratio_of_medians": {str(size): B.ratio_of_medians(times[f"batched{size}"], times[f"separate{size}"])
                             for size in sizes},
        "times_s": times, "median_s": {k: B.med(v) for k, v in times.items()},
        "spread": {k: B.spread(v) for k, v in times.items()},
    }, begun)


def training_only(model: ModelConfig, specs: list[StudentSpec], loader: SoftTargetLoader):
    """Two sides timing training epochs alone: the students as one stack, and each on its own."""
    from pipeline.stacking import stack_students

    def trainees():
        return [build_trainee(name=s.run_id, objective=student_objective(s), seed=s.seed, model_cfg=model,
                              optim=optim(), input_shape=B.SHAPE, num_classes=B.CLASSES, device=DEV,
                              steps_per_epoch=len(loader)) for s in specs]

    stacked, alone = trainees(), trainees()
    group, why = stack_students(stacked, specs=specs, configs=[optim()] * len(specs), loader=loader, device=DEV,
                                input_shape=B.SHAPE, num_classes=B.CLASSES, arch=model.arch, only_where_it_pays=False)
    assert group is not None, why
    plain = dict(augmenter=Augmenter(AugmentConfig()), generator=torch.Generator().manual_seed(0), device=DEV)

    def stacked_epoch():
        group.train_one_epoch(trainees=stacked, loader=loader, epoch=0, **plain)

    def alone_epochs():
        for t in alone:
            train_one_epoch(trainees=[t], loader=loader, epoch=0, **plain)

    return stacked_epoch, alone_epochs


def test_batched_students_cnn(tmp):
    """The cnn student (width 16) on CIFAR-shaped data: batched groups of 4 and 8 against separate runs."""
    batched_case(tmp, case="batched_cnn", model=STUDENT, n=BATCHED_TRAIN)


def test_batched_students_small_cnn(tmp):
    """A small cnn (width 2, 0.3 MFLOP per sample, the size of the digits students): what `--batch auto`
    batches on a CPU, same figures."""
    batched_case(tmp, case="batched_cnn_small", model=ModelConfig(arch="cnn", width=2), n=BATCHED_TRAIN,
                 budget_s=20)


def test_batched_students_mobilenet(tmp):
    """mobilenet_v3_small (BatchNorm, depthwise convolutions, squeeze-excitation, dropout), same figures."""
    batched_case(tmp, case="batched_mobilenet_v3_small", model=ModelConfig(arch="mobilenet_v3_small"),
                 n=256 if DEV.type == "cpu" else BATCHED_TRAIN, budget_s=20,
                 training_only_sides=DEV.type != "cpu")  # on a CPU its rounds take a minute already


# ---------------------------------------------------------------- d) store I/O


def test_store_io(tmp):
    """Decoded-logit read throughput, shuffled streaming vs sequential, writer overhead, naive random reads."""
    begun = B.begin()
    n, classes = 200_000, 100
    labels = np.random.default_rng(0).integers(0, classes, n)
    logits = random_logits(n, classes, 0)
    store = B.write_store(tmp / "d.zarr", logits, labels)
    encoded = store.summary()["bytes_stored"]
    decoded = n * classes * 4
    arr = store.group["train"]["logits"]
    lay = layout_for(n, classes)
    # images of one float each: the loader's figure is its logits path, not copying 12 KB images
    tiny = Split.from_tensors(torch.zeros(n, 1, 1, 1), torch.from_numpy(labels), torch.arange(n))
    idx = np.random.default_rng(1).integers(0, n, 300)
    epoch = iter(range(10_000))

    def seq_chunks() -> None:
        got = sum(len(v) for _, v in store.iter_chunks("train"))
        assert got == n

    def seq_shards() -> None:
        got = sum(len(store.read_logits("train", a, b)) for a, b in map(lay.shard_range, range(lay.num_shards)))
        assert got == n

    def streaming() -> None:
        loader = SoftTargetLoader(tiny, BATCH, seed=0, store=store, cache_mb=0)
        assert not fits_cache(n, classes, 0), "cache_mb=0 must stream"
        got = sum(len(b.y) for b in loader.epoch(next(epoch)))
        assert got == n

    def streaming_in_order() -> None:  # the same loader, same chunks, no shuffle: what the shuffle itself costs
        loader = SoftTargetLoader(tiny, BATCH, seed=0, store=store, cache_mb=0, shuffle=False)
        got = sum(len(b.y) for b in loader.epoch(next(epoch)))
        assert got == n

    def naive() -> None:
        for i in idx:
            arr[int(i)]

    # Contrasts that locate the cost of a chunk read: zarr alone (array handle held, no verification or
    # float32 cast), and the codec alone (the same float16 chunks encoded in memory with the store's own
    # Blosc settings, then decoded).
    def zarr_chunks() -> None:
        got = sum(len(arr[a:a + lay.chunk_rows]) for a in range(0, n, lay.chunk_rows))
        assert got == n

    def lookups() -> None:  # store.group[split][name] once per chunk: two metadata reads through zarr
        for _ in range(0, n, lay.chunk_rows):
            store.group["train"]["logits"]

    blosc = arr.compressors[0]  # zarr's BloscCodec, as the writer configured it
    codec = Blosc(cname=blosc.cname.value, clevel=blosc.clevel,
                  shuffle={"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                           "bitshuffle": Blosc.BITSHUFFLE}[blosc.shuffle.value])
    half = logits.astype(np.float16)
    encoded_chunks = [codec.encode(half[a:a + lay.chunk_rows]) for a in range(0, n, lay.chunk_rows)]
    del half

    def codec_only() -> None:
        got = sum(len(np.frombuffer(codec.decode(c), np.float16).astype(np.float32)) for c in encoded_chunks)
        assert got == n * classes

    times = B.interleaved({"seq_chunks": seq_chunks, "seq_shards": seq_shards, "streaming": streaming,
                           "streaming_in_order": streaming_in_order,
                           "naive_300": naive, "zarr_chunks": zarr_chunks, "codec_only": codec_only,
                           "lookups": lookups},
                          min_reps=5, max_reps=15, budget_s=50)
    def per_s(amount: float, side: str) -> list[float]:
        return [amount / t for t in times[side]]

    gbps = decoded / B.med(times["seq_chunks"]) / 1e9
    gbps_shards = decoded / B.med(times["seq_shards"]) / 1e9
    stream_ratio = B.ratio(times["streaming"], times["streaming_in_order"])
    loader_vs_raw = B.ratio(times["streaming"], times["seq_chunks"])
    naive_rate = len(idx) / B.med(times["naive_300"])
    loader_rate = n / B.med(times["streaming"])
    naive_slowdown = B.ratio(times["naive_300"], times["streaming"]) * n / len(idx)  # per-sample time ratio
    gbps_codec = decoded / B.med(times["codec_only"]) / 1e9
    wrapper = B.ratio(times["seq_chunks"], times["zarr_chunks"])

    # (3) teacher inference with the store written from the background thread vs the same inference alone
    # 1000 classes (ImageNet-like rows): the default layout then has 4096-row shards, so the pass below
    # writes several shards and the background writer has inference to overlap with.
    tn, tclasses = 16_384, 1000
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher_cfg = ModelConfig(arch="cnn", width=8)  # a fast "teacher": writing costs show more
        teacher = build_model(teacher_cfg, B.SHAPE, tclasses).to(DEV).eval()
    x = B.synthetic_split(tn, seed=2, classes=tclasses)
    paths = iter(range(10_000))
    phases: dict[str, list[float]] = {}
    wtimes = B.interleaved({"infer+write": lambda: teacher_pass(teacher, x, tclasses, str(tmp / f"w{next(paths)}"),
                                                                phases),
                            "infer": lambda: teacher_pass(teacher, x, tclasses, None)},
                           min_reps=7, max_reps=21, budget_s=55)
    write_ratio = B.ratio(wtimes["infer+write"], wtimes["infer"])
    phases = {k: v[-len(wtimes["infer"]):] for k, v in phases.items()}  # drop the warm-up round
    # the same ratio without the per-store fixed costs (create + finish), i.e. what the shards themselves cost
    steady = [(w - c - f) / i for w, c, f, i in zip(wtimes["infer+write"], phases["create"], phases["finish"],
                                                    wtimes["infer"])]

    B.record("store_io", [
        B.figure(f"sequential read ({lay.chunk_rows}-row chunks)", gbps, "≥ 1 GB/s", gbps >= 1.0, " GB/s",
                 per_round=per_s(decoded / 1e9, "seq_chunks")),
        B.figure(f"sequential read ({lay.shard_rows}-row shards), contrast", gbps_shards, "—", None, " GB/s",
                 per_round=per_s(decoded / 1e9, "seq_shards")),
        B.figure("shuffled streaming epoch / the same loader in order", stream_ratio, "≤ 1.2", stream_ratio <= 1.2,
                 per_round=B.rounds(times["streaming"], times["streaming_in_order"])),
        B.figure("shuffled streaming epoch (batches) / raw sequential chunk read, contrast", loader_vs_raw, "—",
                 None, per_round=B.rounds(times["streaming"], times["seq_chunks"])),
        B.figure("inference+store write / inference", write_ratio, "≤ 1.05", write_ratio <= 1.05,
                 per_round=B.rounds(wtimes["infer+write"], wtimes["infer"])),
        B.figure("the same without the store's create + finish, contrast", B.med(steady), "—", None,
                 per_round=steady),
        B.figure(f"codec alone (Blosc/{blosc.cname.value} decode + float32 cast), contrast", gbps_codec, "—", None,
                 " GB/s", per_round=per_s(decoded / 1e9, "codec_only")),
        B.figure("read_logits per chunk / raw zarr chunk read, contrast", wrapper, "—", None, "×",
                 per_round=B.rounds(times["seq_chunks"], times["zarr_chunks"])),
        B.figure("a group[split][name] lookup per chunk / read_logits per chunk, contrast",
                 B.ratio(times["lookups"], times["seq_chunks"]), "—", None,
                 per_round=B.rounds(times["lookups"], times["seq_chunks"])),
        B.figure("naive per-sample random read", naive_rate, "contrast", None, " samples/s",
                 per_round=per_s(len(idx), "naive_300")),
        B.figure("naive slowdown vs streaming loader, per sample", naive_slowdown, "contrast", None, "×",
                 per_round=[r * n / len(idx) for r in B.rounds(times["naive_300"], times["streaming"])]),
    ], {
        "config": {"samples": n, "classes": classes, "encoding": "float16", "chunk_rows": lay.chunk_rows,
                   "shard_rows": lay.shard_rows, "chunks": -(-n // lay.chunk_rows), "encoded_bytes": encoded,
                   "decoded_float32_bytes": decoded, "reps": len(times["seq_chunks"]), "loader_batch": BATCH,
                   "naive_reads": len(idx),
                   "loader_images": "(N, 1, 1, 1) zeros, so the figure is the logits path",
                   "codec": str(arr.compressors),
                   "teacher": f"{teacher_cfg.arch} width {teacher_cfg.width}, {tclasses} classes",
                   "teacher_samples": tn, "teacher_shards": layout_for(tn, tclasses).num_shards,
                   "teacher_reps": len(wtimes["infer"])},
        "times_s": {**times, **wtimes},
        "writer_phases_s": phases,
        "writer_phases_median_s": {k: B.med(v) for k, v in phases.items()},
        "median_s": {k: B.med(v) for k, v in {**times, **wtimes}.items()},
        "spread": {k: B.spread(v) for k, v in {**times, **wtimes}.items()},
        "per_chunk_ms": {k: 1e3 * B.med(times[k]) / -(-n // lay.chunk_rows)
                         for k in ("seq_chunks", "zarr_chunks", "codec_only", "lookups")},
        "loader_samples_per_s": loader_rate,
        "ratio_of_medians": {"streaming/seq_chunks": B.ratio_of_medians(times["streaming"], times["seq_chunks"]),
                             "infer+write/infer": B.ratio_of_medians(wtimes["infer+write"], wtimes["infer"])},
    }, begun)


# ---------------------------------------------------------------- e) file count


def test_file_count(tmp):
    """An ImageNet-sized store (1,281,167 x 1000, float16, default layout): files on disk and write time."""
    begun = B.begin()
    n, classes = 1_281_167, 1000
    lay = layout_for(n, classes)
    block = random_logits(lay.shard_rows, classes, 0)  # one shard's worth, reused for every shard
    path = str(tmp / "imagenet.zarr")
    labels = np.zeros(n, dtype=np.int64)
    start = time.perf_counter()
    w = StoreWriter(path, synthetic_provenance(classes), {"train": (labels, np.arange(n))}, encoding="float16")
    try:
        for shard in range(lay.num_shards):
            a, b = lay.shard_range(shard)
            w.put("train", shard, block[:b - a])
        w.finish()
    finally:
        w.abort()
    seconds = time.perf_counter() - start
    info = SoftTargetStore(path).summary()
    files = info["files"]
    assert files and files >= lay.num_shards and info["samples"] == {"train": n}
    assert not np.isnan(SoftTargetStore(path).read_logits("train", n - 10, n)).any()
    shutil.rmtree(path)
    B.record("file_count", [
        B.figure("files on disk", float(files), "≤ 5000 (a few thousand at most)", files <= 5000),
        B.figure("write time", seconds, "reported", None, " s"),
    ], {
        "config": {"samples": n, "classes": classes, "encoding": "float16", "chunk_rows": lay.chunk_rows,
                   "shard_rows": lay.shard_rows, "shards": lay.num_shards,
                   "content": "one 4096 x 1000 block of N(0, 3) logits reused for every shard"},
        "files": files, "seconds": seconds, "bytes_stored": info["bytes_stored"],
        "write_mb_per_s": n * classes * 2 / seconds / 1e6, "compression_ratio": info["compression_ratio"],
    }, begun)
