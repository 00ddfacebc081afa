"""Write the first N images per class of CIFAR-10 (../shared/datasets/cifar10-jpg.tar.gz) as an ImageFolder tree.

    .venv/bin/python benchmarks/cifar_subset.py /tmp/cifar-sub --train 500 --test 100   # 5,000 / 1,000 images

A small, fixed subset for experiments that train many models, e.g. the search in the README's Fig. 2 run.
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=500, help="training images per class")
    p.add_argument("--test", type=int, default=100, help="test images per class")
    a = p.parse_args()
    if not ARCHIVE.is_file():
        raise SystemExit(f"{ARCHIVE} is missing: this script needs the CIFAR-10 JPEG archive in ../shared/datasets")
    limit = {"train": a.train, "test": a.test}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:  # cifar10/<split>/<class>/<file>, in the archive's order
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in limit:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) >= limit[parts[1]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            folder = a.out / parts[1] / parts[2]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / parts[3]).write_bytes(tar.extractfile(member).read())
    for split in limit:
        print(f"{split}: {sum(n for (s, _), n in taken.items() if s == split)} images in {a.out / split}")


if __name__ == "__main__":
    main()
