"""Pictures for the report: thumbnails of stored samples, input-space overlays, PNG data URIs."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ..data.sources import SourceCatalog
from ..errors import SaliencyDBError

PLACEHOLDER_RGB = (214, 219, 224)


def png_data_uri(img: Image.Image) -> str:
    """The image as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fit(img: Image.Image, side: int) -> Image.Image:
    """At most ``side`` pixels on the longer side: tiny images (digits) are enlarged by a whole
    factor with NEAREST so their pixels stay crisp; large ones are shrunk with LANCZOS."""
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGBA") if "A" in img.getbands() or img.mode == "P" else img.convert("RGB")
        if img.mode == "RGBA":
            img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img).convert("RGB")
    w, h = img.size
    longest = max(w, h)
    if longest < side:
        factor = side // longest
        return img.resize((w * factor, h * factor), Image.NEAREST) if factor > 1 else img
    if longest > side:
        img = img.copy()
        img.thumbnail((side, side), Image.LANCZOS)
    return img


def placeholder(side: int) -> Image.Image:
    return Image.new("RGB", (side, side), PLACEHOLDER_RGB)


class Thumbnails:
    """Thumbnails of stored samples, read from each split's data source (opened once, on first use)."""

    def __init__(self, manifest):
        self.manifest = manifest
        self._sources: dict[str, tuple[object, dict[str, int]] | None] = {}
        self._catalog = SourceCatalog()
        self._cache: dict[tuple[int, int], tuple[str, int, int]] = {}
        self.problems: dict[str, str] = {}  # split -> why its images are not shown

    def _source(self, split: str):
        if split not in self._sources:
            rec = self.manifest.splits.get(split)
            if rec is None:
                self._sources[split] = None
                self.problems[split] = f"split '{split}' has no data source in the manifest"
            else:
                try:
                    self._sources[split] = self._catalog.get(rec.source)
                except (SaliencyDBError, OSError) as e:
                    self._sources[split] = None
                    self.problems[split] = f"cannot open {rec.source}: {' '.join(str(e).split())}"
        return self._sources[split]

    def image(self, split: str, key: str) -> Image.Image | None:
        """The stored sample's decoded image, or None when it cannot be read."""
        found = self._source(split)
        if found is None:
            return None
        source, index = found
        i = index.get(key)
        if i is None:
            self.problems.setdefault(split, f"some keys are no longer in {source.spec}")
            return None
        try:
            return source.load(i)
        except (SaliencyDBError, OSError) as e:
            self.problems.setdefault(split, f"some images of {source.spec} cannot be read ({' '.join(str(e).split())})")
            return None

    def get(self, sample_id: int, split: str, key: str, side: int) -> tuple[str, int, int] | str:
        """(data URI, width, height) of the sample's thumbnail; a grey square when the image is unavailable;
        a text sample's sentence (a str) instead."""
        hit = self._cache.get((sample_id, side))
        if hit is None:
            img = self.image(split, key)
            if isinstance(img, str):
                self._cache[(sample_id, side)] = img
                return img
            img = placeholder(side) if img is None else fit(img, side)
            if img.mode == "RGB" and min(img.size) > 48:  # photos: a 256-colour palette makes the PNG ~3x smaller
                img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            hit = (png_data_uri(img), img.width, img.height)
            self._cache[(sample_id, side)] = hit
        return hit


def _blur(m: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur of a 2-D map (edges reflected)."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(m, r, mode="reflect")
    p = np.apply_along_axis(np.convolve, 0, p, k, "valid")
    return np.apply_along_axis(np.convolve, 1, p, k, "valid")


def overlay(x: np.ndarray, saliency: np.ndarray, mean, std, side: int) -> Image.Image:
    """The saliency map (H, W) as a heat map over the model's input ``x`` (C, H, W, normalised).

    The map is smoothed a little (sigma = 1/28 of the image side) so the few pixels that matter
    read as spots rather than speckle; the weakest 30% are left transparent.
    """
    from matplotlib import colormaps

    img = x * np.asarray(std, dtype=np.float32)[:, None, None] + np.asarray(mean, dtype=np.float32)[:, None, None]
    img = np.clip(img, 0.0, 1.0)
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    base = fit(Image.fromarray((rgb.transpose(1, 2, 0) * 255).round().astype(np.uint8), "RGB"), side)
    h, w = base.height, base.width
    m = np.asarray(saliency, dtype=np.float64)
    m = _blur(m, max(m.shape) / 28) if min(m.shape) > 2 else m
    m = np.asarray(Image.fromarray(m.astype(np.float32), "F").resize((w, h), Image.BILINEAR), dtype=np.float64)
    top = np.percentile(m, 99.5) if m.size else 0.0
    m = np.clip(m / top, 0.0, 1.0) if top > 0 else np.zeros_like(m)
    gray = np.asarray(base.convert("L"), dtype=np.float64)[..., None] / 255.0
    alpha = np.clip((m - 0.3) / 0.7, 0.0, 1.0)[..., None]
    out = np.repeat(gray, 3, axis=2) * 0.7 * (1 - alpha) + colormaps["inferno"](m)[..., :3] * alpha
    return Image.fromarray((out * 255).round().astype(np.uint8), "RGB")
