"""CLI: prepare training data.

    python -m nstjax.data prepare coco --dir ~/tensorflow_datasets            # downloads COCO 2017 (19 GB)
    python -m nstjax.data prepare coco --dir DIR --archive train=train2017.zip [--limit 20000]

Writes `coco/2017` in TFDS' array_record format, read by `python -m nstjax.train data=coco
data.data_dir=DIR` (or $TFDS_DATA_DIR). TensorFlow is not needed, here or to train.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from nstjax.errors import EXIT_USAGE, NstjaxError


def _archives(values: list[str]) -> dict[str, Path]:
    out = {}
    for v in values:
        split, sep, path = v.partition("=")
        if not sep or split not in ("train", "validation"):
            raise NstjaxError(f"--archive {v!r}: expected train=PATH or validation=PATH")
        if not Path(path).expanduser().is_file():
            raise NstjaxError(f"--archive {v!r}: {path} is not a file")
        out[split] = Path(path).expanduser()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nstjax.data", description="Prepare training data for nstjax.")
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write a dataset in the form `data=...` reads")
    prep.add_argument("dataset", choices=["coco"])
    prep.add_argument("--dir", default=os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"),
                      help="TFDS data dir to write into (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    prep.add_argument("--archive", action="append", default=[], metavar="SPLIT=ZIP",
                      help="use a downloaded train2017.zip / val2017.zip instead of downloading")
    prep.add_argument("--splits", default="train", help="comma list of train,validation (default: train)")
    prep.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    prep.add_argument("--cache", default=None, help="where downloads go (default: <dir>/downloads)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        from nstjax.training import coco

        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        bad = [s for s in splits if s not in coco.ARCHIVES]
        if bad:
            raise NstjaxError(f"--splits: unknown {bad}; choose from train, validation")
        if args.limit is not None and args.limit < 1:
            raise NstjaxError(f"--limit must be >= 1, got {args.limit}")
        data_dir = Path(args.dir).expanduser()
        archives = _archives(args.archive)
        cache = Path(args.cache).expanduser() if args.cache else data_dir / "downloads"
        for split in splits:
            if split not in archives:
                archives[split] = coco.download_archive(split, cache)
        out = coco.prepare(data_dir, archives, limit=args.limit)
    except NstjaxError as e:
        print(f"nstjax: error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    print(f"wrote {out}; train with: python -m nstjax.train data=coco data.data_dir={data_dir}")


if __name__ == "__main__":
    main()
