"""An ImageNet-layout dataset in shards: WebDataset tar files with an index, read as a map-style dataset.

Why shards: a cluster file system serves a few hundred 256 MB files far better than 1.3 million small ones
(every open is a metadata round trip). Why this reader (docs/classification.md, "Data in shards"): the
exact mid-epoch resume of the folder format comes from the map-style pipeline in ``data.py`` (the
``EpochIndexSampler`` orders an epoch by (seed, epoch), ``_Keyed`` seeds each sample's augmentation by
(seed, epoch, index), ``ResumableLoader`` skips the batches already seen). A streaming reader
(``webdataset.WebDataset``, litdata's ``StreamingDataset``) brings its own order, shuffle buffer and resume
state; this reader keeps the sampler and only replaces how sample ``i`` is read: ``os.pread`` of its bytes at
the offset the index gives. Sample ``i`` is the folder's sample ``i`` (the same sorted order, the original
file bytes, the same decoder), so training on shards gives bit for bit the run on the folder.

Layout written by ``tools/make_shards.py SRC OUT`` (``write_shards``), one folder per split like the
image folders::

    OUT/train/index.json            written last: a split without it is incomplete
    OUT/train/shard-000000.tar      WebDataset samples: <key>.<ext> (the original file) + <key>.cls (label)
    OUT/val/...

The tars are plain POSIX tar files in WebDataset's layout (``webdataset`` / ``wids`` and ``tar`` read
them); ``index.json`` holds the class names (the source's sorted class folders), the shards (file, bytes,
samples; also WebDataset's ``shardlist`` of url / nsamples) and per sample its shard, offset, size, label and
source path. Reading checks what a wrong or damaged set looks like before training starts: a missing or
unreadable index, a missing shard, a shard whose size differs from the index (truncated or replaced), labels
outside the class list; each is a one-line ``InputError`` naming the file. Imports the standard library,
numpy and datasets.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageFolderDataset,
    ImageListDataset,
    check_folders,
    read_rgb,
    scan_split,
)
from .errors import DataNotFoundError, InputError

__all__ = [
    "FORMAT",
    "INDEX",
    "ShardImageDataset",
    "ShardListDataset",
    "ShardSplit",
    "parse_size",
    "read_index",
    "write_shards",
]

FORMAT = "swtasks-webdataset"
VERSION = 1
INDEX = "index.json"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``256MB`` -> 256e6 bytes; ``64MiB`` -> 64 * 2**20; a bare number is bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise InputError(f"--shard-size {text!r}: expected a size like 256MB, 1GB, 64MiB or a number of bytes")
    unit = m.group(2).lower()
    power = "kmgt".index(unit[0]) + 1 if unit[:1] in ("k", "m", "g", "t") else 0
    size = int(float(m.group(1)) * (1024 if "i" in unit else 1000) ** power)
    if size < 1:
        raise InputError(f"--shard-size {text!r}: must be at least one byte")
    return size


# ------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------


class _ShardWriter:
    """Tar shards of at most ``shard_size`` bytes (a sample larger than that gets a shard of its own)."""

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        self.tar: tarfile.TarFile | None = None
        self.shards: list[dict] = []
        self.columns: dict[str, list] = {"shard": [], "offset": [], "size": [], "label": [], "path": []}

    def _open_next(self) -> None:
        self.close()
        name = f"shard-{len(self.shards):06d}.tar"
        self.tar = tarfile.open(self.out / f".{name}.tmp", "w", format=tarfile.USTAR_FORMAT)
        self.shards.append({"file": name, "samples": 0})

    def _member(self, name: str, data: bytes) -> int:
        """Add one member; returns the offset of its data in the shard."""
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # no clock: the same source gives the same bytes
        header = info.tobuf(self.tar.format, self.tar.encoding, self.tar.errors)
        offset = self.tar.offset + len(header)
        self.tar.addfile(info, io.BytesIO(data))
        return offset

    def add(self, path: str, rel: str, label: int) -> None:
        data = Path(path).read_bytes()
        # header + data + the label member (2 blocks); the end of the archive adds up to 10 kB
        if self.tar is None or (self.shards[-1]["samples"] and self.tar.offset + len(data) + 3 * 512 > self.shard_size):
            self._open_next()
        key = f"{len(self.columns['path']):09d}"  # WebDataset keys: no dots; the source path is in the index
        ext = Path(path).suffix.lower().lstrip(".") or "img"
        offset = self._member(f"{key}.{ext}", data)
        self._member(f"{key}.cls", str(label).encode())
        self.shards[-1]["samples"] += 1
        for k, v in (("shard", len(self.shards) - 1), ("offset", offset), ("size", len(data)), ("label", label),
                     ("path", rel)):
            self.columns[k].append(v)

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            name = self.shards[-1]["file"]
            tmp = self.out / f".{name}.tmp"
            self.shards[-1]["bytes"] = tmp.stat().st_size
            os.replace(tmp, self.out / name)
            self.tar = None


def write_shards(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard_size: int | str = "256MB",
    splits: Sequence[str] = ("train", "val"),
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write the ImageNet-layout folder ``src`` (``src/<split>/<class>/<image>``) as shards under ``out``,
    one folder per split; returns {split: index path}. The samples, classes and checks are the folder
    format's (``scan_split``: sorted classes, images at any depth, empty class folders refused; every split
    with the first split's class folders). Image bytes are copied, not decoded or re-encoded."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    size = parse_size(shard_size)
    if not src.is_dir():
        raise DataNotFoundError(f"source folder {src} does not exist (expected <src>/<split>/<class>/<image>)")
    present = [s for s in splits if (src / s).is_dir()]
    if not present:
        raise DataNotFoundError(f"source folder {src} has none of the split folders {list(splits)}")
    scanned = {s: scan_split(src / s, s) for s in present}
    first = present[0]
    for s in present[1:]:
        check_folders(scanned[first][0], scanned[s][0], src / first, src / s)
    written = {}
    for s in present:
        classes, samples = scanned[s]
        split_out = out / s
        split_out.mkdir(parents=True, exist_ok=True)
        stale = split_out / INDEX
        if stale.exists():  # a rewrite: the old index must not describe the new shards while they are written
            stale.unlink()
        writer = _ShardWriter(split_out, size)
        for path, label in samples:
            writer.add(path, os.path.relpath(path, src / s), label)
        writer.close()
        index = {
            "format": FORMAT,
            "version": VERSION,
            "split": s,
            "source": str(src / s),
            "classes": classes,
            "num_samples": len(samples),
            "shards": writer.shards,
            # WebDataset's (wids) shard list, for readers of that library
            "shardlist": [{"url": sh["file"], "nsamples": sh["samples"]} for sh in writer.shards],
            "samples": writer.columns,
        }
        tmp = split_out / f".{INDEX}.tmp"
        tmp.write_text(json.dumps(index, separators=(",", ":")))
        os.replace(tmp, split_out / INDEX)
        written[s] = split_out / INDEX
        if log:
            total = sum(sh["bytes"] for sh in writer.shards)
            log(f"{s}: {len(samples)} images, {len(classes)} classes -> {len(writer.shards)} shard(s), "
                f"{total / 1e6:.1f} MB in {split_out}")
    return written


# ------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------


@dataclass
class ShardSplit:
    """One split's index: where sample ``i`` lies (shard, offset, size) and its label."""

    index_path: Path
    classes: list[str]
    files: list[Path]  # shard paths, by shard number
    shard: np.ndarray  # (N,) int32
    offset: np.ndarray  # (N,) int64
    size: np.ndarray  # (N,) int64
    labels: list[int]
    names: list[str]  # "<shard file>:<source path>", for messages

    def __len__(self) -> int:
        return len(self.labels)


def _bad(index_path: Path, what: str) -> InputError:
    return InputError(f"shard index {index_path}: {what}; rewrite the shards with tools/make_shards.py")


def read_index(split_dir: str | os.PathLike, what: str = "split", *, check_files: bool = True) -> ShardSplit:
    """Read and check ``split_dir/index.json`` (and, with ``check_files``, that every shard exists with the
    size the index gives)."""
    split_dir = Path(split_dir)
    index_path = split_dir / INDEX
    if not index_path.is_file():
        hint = (" (it holds image folders: use --data.format folder, or write shards with tools/make_shards.py)"
                if split_dir.is_dir() and any(p.is_dir() for p in split_dir.iterdir())
                else " (write shards with tools/make_shards.py SRC_FOLDER OUT)")
        raise DataNotFoundError(f"{what} shard index {index_path} does not exist{hint}")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(index_path, f"unreadable ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise _bad(index_path, f"not a {FORMAT} index (format {index.get('format') if isinstance(index, dict) else None!r})")
    if index.get("version") != VERSION:
        raise _bad(index_path, f"version {index.get('version')!r}, this reader knows version {VERSION}")
    try:
        classes = [str(c) for c in index["classes"]]
        shards = index["shards"]
        cols = index["samples"]
        shard = np.asarray(cols["shard"], dtype=np.int32)
        offset = np.asarray(cols["offset"], dtype=np.int64)
        size = np.asarray(cols["size"], dtype=np.int64)
        labels = [int(v) for v in cols["label"]]
        paths = [str(p) for p in cols["path"]]
        files = [split_dir / str(sh["file"]) for sh in shards]
        expected = [int(sh["bytes"]) for sh in shards]
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(index_path, f"malformed ({type(e).__name__}: {e})") from None
    n = len(labels)
    if not (len(shard) == len(offset) == len(size) == len(paths) == n) or n == 0:
        raise _bad(index_path, "the sample columns are empty or of different lengths")
    if len(set(classes)) != len(classes) or not classes:
        raise _bad(index_path, "the class list is empty or has duplicate names")
    if min(labels) < 0 or max(labels) >= len(classes):
        raise _bad(index_path, f"labels outside the {len(classes)} classes ({min(labels)}..{max(labels)})")
    if shard.min() < 0 or shard.max() >= len(files):
        raise _bad(index_path, f"samples in shards outside the {len(files)} listed")
    if ((offset + size) > np.asarray(expected, dtype=np.int64)[shard]).any():
        raise _bad(index_path, "sample bytes beyond the end of their shard")
    if check_files:
        for f, want in zip(files, expected):
            if not f.is_file():
                raise DataNotFoundError(f"shard {f} listed in {index_path} does not exist")
            got = f.stat().st_size
            if got != want:
                raise InputError(
                    f"shard {f} is {got} bytes, its index {index_path} says {want}: truncated or replaced; "
                    "copy it again or rewrite the shards with tools/make_shards.py"
                )
    names = [f"{files[s].name}:{p}" for s, p in zip(shard.tolist(), paths)]
    return ShardSplit(index_path, classes, files, shard, offset, size, labels, names)


def scan_shards(split_dir: str | os.PathLike, what: str = "split") -> tuple[list[str], ShardSplit]:
    """``scan_split`` for shards: (classes, the split), with the folder format's check that every class has
    images."""
    split = read_index(split_dir, what)
    empty = sorted(set(range(len(split.classes))) - set(split.labels))
    if empty:
        shown = [split.classes[i] for i in empty[:5]]
        raise InputError(f"{what} shard index {split.index_path}: classes without images: {shown}"
                         f"{' ...' if len(empty) > 5 else ''}")
    return split.classes, split


class _ShardReading:
    """Reads sample ``i`` with one ``os.pread`` (no shared file position: safe in forked workers, whose
    descriptors are inherited or opened on first use)."""

    split: ShardSplit

    def _init_shards(self, split: ShardSplit) -> None:
        self.split = split
        self._fds: dict[int, int] = {}

    def _read_at(self, i: int):
        s, off, n = int(self.split.shard[i]), int(self.split.offset[i]), int(self.split.size[i])
        fd = self._fds.get(s)
        if fd is None:
            fd = self._fds[s] = os.open(self.split.files[s], os.O_RDONLY)
        data = os.pread(fd, n, off)
        if len(data) != n:
            raise OSError(f"shard {self.split.files[s]} ends at byte {off + len(data)}, "
                          f"the sample needs {off}..{off + n}: truncated")
        return read_rgb(io.BytesIO(data), self.max_image_pixels)

    def __getstate__(self):  # spawned workers open their own descriptors
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


class ShardImageDataset(_ShardReading, ImageFolderDataset):
    """(image, label) pairs of a shard split: the folder format's ``ImageFolderDataset`` (transforms, keyed
    augmentation, corrupt-image policy; messages name ``<shard dir>/<shard>:<source path>``) reading from the
    shards."""

    def __init__(self, split: ShardSplit, classes, transform=None, corrupt_images: str = "error", seed: int = 0,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        where = split.index_path.parent
        super().__init__([(str(where / n), t) for n, t in zip(split.names, split.labels)], classes, transform,
                         corrupt_images, seed, max_image_pixels)
        self._init_shards(split)


class ShardListDataset(_ShardReading, ImageListDataset):
    """(image, index) pairs of a shard split, for prediction."""

    def __init__(self, split: ShardSplit, transform=None, corrupt_images: str = "error", seed: int = 0,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        where = split.index_path.parent
        super().__init__([str(where / n) for n in split.names], transform, corrupt_images, seed, max_image_pixels)
        self._init_shards(split)
