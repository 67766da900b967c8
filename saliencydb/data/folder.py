"""``imagefolder:PATH``: one sub-folder of images per class."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from saliencydb.data.base import IMAGE_EXTENSIONS, Source, open_image, printable_key
from saliencydb.errors import SpecError


class ImageFolderSource(Source):
    """``imagefolder:PATH``: one sub-folder per class (sorted by name), images found recursively inside.

    Symbolic links are followed, but a real directory is visited once and a file reached
    twice is listed once (a link loop cannot multiply samples)."""

    labels_are_names = True

    def __init__(self, spec: str, root: Path) -> None:
        if not root.is_dir():
            raise SpecError(f"data spec '{spec}': {root} is not an existing folder; give a folder with one sub-folder per class")
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not classes:
            raise SpecError(f"data spec '{spec}': {root} has no class sub-folders; put each class's images in ROOT/CLASS/")
        self.root = root
        self._files: list[str] = []
        self._labels: list[int] = []
        # real file -> (depth, walk order, path, label) of its most direct path
        best: dict[str, tuple[int, int, str, int]] = {}
        for label, name in enumerate(classes):
            seen_dirs: set[str] = set()
            for folder, dirs, files in os.walk(root / name, followlinks=True):  # top-down, sorted: a stable order
                real = os.path.realpath(folder)
                if real in seen_dirs:  # a link back to a visited directory: do not descend again
                    dirs[:] = []
                    continue
                seen_dirs.add(real)
                dirs.sort()
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        rel = Path(folder, f).relative_to(root).as_posix()
                        cand = (rel.count("/"), len(best), rel, label)  # rel may hold undecodable bytes (surrogates)
                        target = os.path.realpath(os.path.join(folder, f))
                        if target not in best or cand[0] < best[target][0]:
                            best[target] = cand
        self._paths: list[str] = []
        for _, _, rel, label in sorted(best.values(), key=lambda c: (c[3], c[1])):
            self._paths.append(rel)
            self._files.append(printable_key(rel))
            self._labels.append(label)
        if not self._files:
            raise SpecError(
                f"data spec '{spec}': no image files under {root}/*/; expected extensions {' '.join(IMAGE_EXTENSIONS)}"
            )
        super().__init__(spec, classes, None)

    def __len__(self) -> int:
        return len(self._files)

    def key(self, i: int) -> str:
        return self._files[i]

    def label(self, i: int) -> int:
        return self._labels[i]

    def load(self, i: int) -> Image.Image:
        return open_image(self.root / self._paths[i], self._files[i])

    def file(self, i: int) -> Path | None:
        return (self.root / self._paths[i]).resolve()
