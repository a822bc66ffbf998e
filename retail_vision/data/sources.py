"""Where labelled photos come from: class folders (any depth), manifests, and stratified splits.

Each source yields `Examples`: file paths, integer labels and the class names. TFDS datasets
are handled in `tfds_source.py` because they arrive decoded, not as files.
No TensorFlow here: listing and splitting files is plain Python.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import random
from collections import Counter, defaultdict

from retail_vision.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".heic", ".heif")
MANIFEST_EXTENSIONS = (".csv", ".txt")


@dataclasses.dataclass
class Examples:
    """Labelled image files. `labels[i]` indexes `class_names`."""

    paths: list[str]
    labels: list[int]
    class_names: list[str]
    orientations: list[int] | None = None  # EXIF orientation per file (1 = upright), set by the scan

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        counter = Counter(self.labels)
        return {name: counter.get(index, 0) for index, name in enumerate(self.class_names)}

    def in_classes(self, class_names: list[str]) -> tuple["Examples", dict[str, int]]:
        """(the examples of `class_names`' classes, labels indexing `class_names`; {other class: examples left out}).

        Classes are matched by name, so any order and any subset of the classes is fine.
        """
        index = {name: i for i, name in enumerate(class_names)}
        counts = self.counts()
        left_out = {name: counts[name] for name in self.class_names if name not in index}
        kept = [i for i, label in enumerate(self.labels) if self.class_names[label] in index]
        labels = [index[self.class_names[self.labels[i]]] for i in kept]
        return Examples([self.paths[i] for i in kept], labels, list(class_names)), left_out

    def subset(self, indices: list[int]) -> "Examples":
        orientations = [self.orientations[i] for i in indices] if self.orientations is not None else None
        return Examples([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.class_names,
                        orientations)


def load_examples(source: str, class_names_file: str | None = None, known_classes: list[str] | None = None,
                  allow_outside_paths: bool = False, min_classes: int = 2) -> Examples:
    """Read a folder of class folders or a manifest file.

    `known_classes` (the training classes) makes a validation source use the same label
    order; a class the training data does not have is an error. A manifest may only name
    files inside its own folder unless `allow_outside_paths`. Training needs `min_classes` 2;
    scoring a model takes a folder of one class as well.
    """
    if not os.path.exists(source):
        raise DataError(f"{source}: no such folder or manifest file")
    if os.path.isdir(source):
        examples = from_folder(source, photos_of_one_class=min_classes == 1)
    elif source.lower().endswith(MANIFEST_EXTENSIONS):
        examples = from_manifest(source, class_names_file, allow_outside_paths)
    else:
        raise DataError(f"{source}: not a folder or a manifest (.csv/.txt); point data.source at one")
    if known_classes is not None:
        return _relabel(examples, known_classes, source)
    if len(examples.class_names) < min_classes:
        raise DataError(
            f"{source}: found {len(examples.class_names)} class ({', '.join(examples.class_names)}); "
            "a classifier needs at least 2 class folders"
        )
    return examples


def from_folder(root: str, photos_of_one_class: bool = False) -> Examples:
    """Each folder that holds images directly is a class, named after the folder (the leaf).

    Linked folders are followed (a dataset is often a folder of links into a photo store), each
    real folder once. Other files in a class folder (HEIC photos, notes) come along so that the
    scan lists them as skipped; hidden files are ignored.
    With `photos_of_one_class`, `root` itself may hold the photos of one class (scoring a batch of one product).
    """
    images_by_folder: dict[str, list[str]] = {}
    empty_leaves, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to the same folder
            subfolders.clear()
            continue
        seen.add(real)
        subfolders.sort()
        files = sorted(name for name in files if not name.startswith("."))
        if any(name.lower().endswith(IMAGE_EXTENSIONS) for name in files):
            images_by_folder[folder] = [os.path.join(folder, name) for name in files]
        elif not subfolders and folder != root:
            empty_leaves.append((folder, files))
    if empty_leaves:
        folder, files = empty_leaves[0]
        if not files:
            raise DataError(f"{folder}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} files); "
                            "add photos or remove the folder")
        listed = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
        raise DataError(f"{folder}: no usable photos in this class folder (only {listed}; usable: "
                        f"{'/'.join(IMAGE_EXTENSIONS)}); convert them to JPEG or remove the folder")
    if not images_by_folder:
        raise DataError(f"{root}: no images found (looked for {'/'.join(IMAGE_EXTENSIONS)} in class folders)")
    if root in images_by_folder and photos_of_one_class and len(images_by_folder) == 1:
        name = os.path.basename(os.path.normpath(root))
        return Examples(images_by_folder[root], [0] * len(images_by_folder[root]), [name])
    if root in images_by_folder:
        raise DataError(f"{root}: holds images directly; put each class's photos in its own folder")
    folders = sorted(images_by_folder)
    names = _class_names_for(folders, root)
    paths, labels = [], []
    for label, folder in enumerate(folders):
        paths.extend(images_by_folder[folder])
        labels.extend([label] * len(images_by_folder[folder]))
    return Examples(paths, labels, names)


def _class_names_for(folders: list[str], root: str) -> list[str]:
    """Leaf folder names, or the path below root where two leaves share a name."""
    leaves = [os.path.basename(folder) for folder in folders]
    repeated = {name for name, count in Counter(leaves).items() if count > 1}
    return [
        os.path.relpath(folder, root).replace(os.sep, "/") if leaf in repeated else leaf
        for folder, leaf in zip(folders, leaves)
    ]


def from_manifest(manifest: str, class_names_file: str | None = None, allow_outside_paths: bool = False) -> Examples:
    """Rows `path,label[,...]`; paths relative to the manifest; label is a name, or an id with a class-name file.

    A path that leaves the manifest's folder (`../../etc/passwd`, or absolute) is refused unless
    `allow_outside_paths`: a manifest from elsewhere must not make us read arbitrary files.
    """
    base = os.path.realpath(os.path.dirname(os.path.abspath(manifest)))
    rows = []
    with open(manifest, encoding="utf-8", newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle, skipinitialspace=True), start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise DataError(f"{manifest}:{line_number}: expected 'path,label', received {','.join(row)!r}")
            rows.append((line_number, row[0].strip(), row[1].strip()))
    if rows and not _looks_like_image(rows[0][1]):
        rows = rows[1:]  # a header row such as "path,label"
    if not rows:
        raise DataError(f"{manifest}: the manifest lists no images")

    id_names = _read_class_names(class_names_file) if class_names_file else None
    if id_names is None and all(label.isdigit() for _, _, label in rows):
        raise DataError(
            f"{manifest}: labels are ids; set data.class_names to a file with one class name per id"
        )
    named, seen = [], {}
    for line_number, path, label in rows:
        if id_names is not None:
            if not label.isdigit() or int(label) not in id_names:
                raise DataError(f"{manifest}:{line_number}: label {label!r} is not an id in {class_names_file}")
            label = id_names[int(label)]
        resolved = os.path.normpath(os.path.join(base, path))
        if not allow_outside_paths and os.path.commonpath([base, os.path.realpath(resolved)]) != os.path.realpath(base):
            raise DataError(
                f"{manifest}:{line_number}: {path!r} is outside the manifest's folder; "
                "set data.allow_outside_paths: true if that is intended"
            )
        if resolved in seen:  # a repeated row would count twice and could land in train and validation
            if seen[resolved] != label:
                raise DataError(f"{manifest}:{line_number}: {path!r} is listed again with another label ({label!r})")
            continue
        seen[resolved] = label
        named.append((resolved, label))
    class_names = sorted({label for _, label in named})
    if id_names is not None:  # keep the id order the class-name file defines
        used = {label for _, label in named}
        class_names = [id_names[i] for i in sorted(id_names) if id_names[i] in used]
    index = {name: i for i, name in enumerate(class_names)}
    return Examples([path for path, _ in named], [index[label] for _, label in named], class_names)


def _looks_like_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def read_class_table(path: str, what: str) -> list[list[str]]:
    """Rows of a class table (`name` per line, or CSV `name,id,...`), without its header row if any."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} not found")
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle, skipinitialspace=True) if row and row[0].strip()]
    if rows and len(rows[0]) >= 2 and not rows[0][1].strip().isdigit():
        rows = rows[1:]  # a header such as "Class Name (str),Class ID (int),..."
    return rows


def _read_class_names(path: str) -> dict[int, str]:
    """One name per line (line i = id i), or CSV rows `name,id,...` with an optional header."""
    rows = read_class_table(path, "class-name file (data.class_names)")
    if rows and len(rows[0]) >= 2:
        return {int(row[1]): row[0].strip() for row in rows}
    return {i: row[0].strip() for i, row in enumerate(rows)}


def _relabel(examples: Examples, known_classes: list[str], source: str) -> Examples:
    matched, unknown = examples.in_classes(known_classes)
    if unknown:
        raise DataError(f"{source}: classes not in the training data: {', '.join(list(unknown)[:5])}")
    return matched


def stratified_split(examples: Examples, fraction: float, seed: int,
                     field: str = "data.validation") -> tuple[Examples, Examples]:
    """Hold out `fraction` of each class (at least one image where the class has two or more)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{field}: received {fraction}; a fraction must be between 0 and 1")
    by_class = defaultdict(list)
    for i, label in enumerate(examples.labels):
        by_class[label].append(i)
    rng = random.Random(seed)
    train, held_out = [], []
    for label in sorted(by_class):
        indices = by_class[label]
        rng.shuffle(indices)
        n_val = min(max(1, round(len(indices) * fraction)), len(indices) - 1)
        held_out.extend(indices[:n_val])
        train.extend(indices[n_val:])
    return examples.subset(sorted(train)), examples.subset(sorted(held_out))
