"""`kd inspect` and `kd stores`: what a store holds, and which stores a root holds, as text or JSON."""
from __future__ import annotations

import argparse
import json
import os
import sys

from flows.options import defaults, json_object
from pipeline.config import TeacherConfig
from pipeline.errors import UserError
from pipeline.fields import STORAGE_OPTIONS_HELP


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def _pct(score: float | None) -> str:
    """A teacher score as a percentage; "—" while the store is unfinished (it is scored when completed)."""
    return "—" if score is None else f"{100 * score:.2f}%"


def cmd_inspect(a: argparse.Namespace) -> None:
    from pipeline.store import SoftTargetStore

    store = SoftTargetStore(a.path, storage_options=a.storage_options, require_complete=False)
    info = store.summary()
    if a.verify:
        info["verified_rows"] = store.verify()
        from pipeline.compat import check_fingerprints

        info["fingerprints"] = check_fingerprints(store)
    if a.verify_views:
        from pipeline.view_fidelity import verify_views

        info["verified_views"] = verify_views(store, samples=a.verify_views)
    if a.verify_data:
        from pipeline.compat import verify_data

        info["verified_data"] = verify_data(store)
    if a.json:
        print(json.dumps(info, indent=2, default=str))
        return
    t, d = info["teacher"], info["dataset"]
    print(f"store:            {info['path']}")
    print(f"format_version:   {info['format_version']}   complete: {info['complete']}   created: {info['created_at']}")
    print(f"teacher:          {t['arch']} ({t['params']:,} params)  val acc {_pct(t['val_acc'])}  "
          f"test acc {_pct(t['test_acc'])}")
    print(f"checkpoint:       {t['checkpoint']}  sha256 {t['checkpoint_sha256'][:16]}…")
    print(f"dataset:          {d['name']}  {d['num_classes']} classes  input {tuple(d['input_shape'])}")
    for split, n in info["samples"].items():
        print(f"  {split:<5} {n:>7} samples  fingerprint {d['splits'][split]['fingerprint'][:16]}…")
    if d.get("labels"):  # format_version 6 on: the students' label mask over train
        print(f"  train rows for the students: {d['labels']['labelled']} labelled, {d['labels']['unlabelled']} "
              f"unlabelled (fingerprint {d['labels']['fingerprint'][:16]}…)")
    print(f"encoding:         {info['encoding']}   views per sample: {info['views']}"
          + (f" ({info['logits_bytes_per_view']:.1f} B of logits per view)" if info["views"] > 1 else ""))
    print(f"size:             {_human_bytes(info['bytes_stored'])}  ({info['bytes_per_sample']:.1f} B/sample, "
          f"logits {info['logits_bytes_per_sample']:.1f} B/sample, compression {info['compression_ratio']:.2f}x)")
    print(f"provenance_key:   {info['provenance_key']}")
    for depth, parent in enumerate(info.get("lineage", []), 1):
        print(f"{'lineage:' if depth == 1 else '':<17} {'  ' * (depth - 1)}↳ taught by the student of {parent['store']}"
              f" ({parent['teacher']}, test acc {100 * parent['test_acc']:.2f}%)")
    if a.verify:
        print(f"verified:         every chunk of every array decoded, checksums and manifest ok "
              f"({info['verified_rows']})")
        print(f"fingerprints:     {info['fingerprints']}")
        if info["fingerprints"].startswith("not checked"):
            print(f"warning: labels and ids were {info['fingerprints']}", file=sys.stderr)
    if a.verify_views:
        print(f"views verified:   {info['verified_views']}")
    if a.verify_data:
        print(f"data verified:    every sample read again, content of {', '.join(info['verified_data'])} matches")
    if not info["complete"]:
        print("warning: this store is INCOMPLETE; stage 2 will refuse it", file=sys.stderr)


def cmd_stores(a: argparse.Namespace) -> None:
    from pipeline.store import SoftTargetStore, find_stores

    rows = []
    for path in find_stores(a.root, a.storage_options):
        try:
            s = SoftTargetStore(path, storage_options=a.storage_options, require_complete=False).summary()
        except UserError as exc:
            rows.append({"name": os.path.basename(path), "path": path, "damaged": exc.one_line()})
            continue
        except Exception as exc:  # noqa: BLE001 one bad store never ends the listing (its type only: no content)
            rows.append({"name": os.path.basename(path), "path": path,
                         "damaged": f"store: unreadable ({type(exc).__name__})"})
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
        if "damaged" in r:
            print(f"{r['name']:<40} DAMAGED: {r['damaged']}")
            continue
        print(f"{r['name']:<40} {r['dataset']:<10} {r['teacher']:<12} acc {_pct(r['test_acc']):>7}  "
              f"{r['encoding']:<8} {_human_bytes(r['bytes']):>9}  {r['created']}  "
              f"{'complete' if r['complete'] else 'INCOMPLETE'}")


def add_store_commands(sub) -> None:
    """Add `kd inspect` and `kd stores` to the `kd` subcommands ``sub``."""
    p = sub.add_parser("inspect", help="a store's metadata, size and compression")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true",
                   help="decode every chunk of every array, check every checksum and the manifest, and the labels and "
                        "ids against the data's fingerprints")
    p.add_argument("--verify-views", type=int, default=0, metavar="N",
                   help="rerun the recorded teacher on N replayed samples and compare every view (default: 0)")
    p.add_argument("--verify-data", action="store_true",
                   help="read every sample of the recorded dataset again and compare its full content hash")
    p.add_argument("--storage-options", type=json_object, metavar="JSON", help=STORAGE_OPTIONS_HELP)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("stores", help="list the stores under a root")
    p.add_argument("root", nargs="?", default=defaults(TeacherConfig)["store_root"],
                   help="a path or any fsspec URL (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--storage-options", type=json_object, metavar="JSON", help=STORAGE_OPTIONS_HELP)
    p.set_defaults(func=cmd_stores)
