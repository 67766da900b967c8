"""Image preprocessing: PIL image -> normalised float32 tensor, described by a small, serialisable spec."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from saliencydb.errors import DataError, SpecError

_MODES = ("RGB", "L")
_INTERPOLATIONS = tuple(m.value for m in InterpolationMode)
_SIDE_KEYS = ("resize", "crop", "size")
_KEYS = ("preset", "mode", *_SIDE_KEYS, "mean", "std", "interpolation")
_SPEC_HELP = (
    "use a preset (imagenet, mnist, cifar, sklearn-digits) or key=value pairs such as "
    "mode=RGB,resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225 (preset=NAME,KEY=VALUE overrides)"
)


@dataclass(frozen=True)
class Transform:
    """Convert mode, optionally resize the shorter side and centre crop, scale to [0, 1] and normalise.

    With ``resize`` and ``crop`` both None, ``size`` (when set) is the exact square side every image
    must already have; an image of another size raises DataError instead of being silently rescaled.
    """

    mode: str
    resize: int | None
    crop: int | None
    size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise SpecError(f"transform mode {self.mode!r} is not supported; use mode=RGB or mode=L")
        for key in _SIDE_KEYS:
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise SpecError(f"transform {key}={value!r} is not a positive integer; give e.g. {key}=224 or {key}=none")
        if self.size is not None and (self.resize is not None or self.crop is not None):
            raise SpecError("transform size= cannot be combined with resize= or crop=; size= means 'no resizing, expect exactly this side'")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise SpecError(
                    f"transform {key} has {len(getattr(self, key))} values but mode {self.mode} has {self.channels} "
                    f"channel(s); give {self.channels} values separated by '/'"
                )
        if any(s <= 0 for s in self.std):
            raise SpecError(f"transform std {self.std} must be positive; give e.g. std=0.229/0.224/0.225")
        if self.interpolation not in _INTERPOLATIONS:
            raise SpecError(f"transform interpolation {self.interpolation!r} is unknown; use one of {', '.join(_INTERPOLATIONS)}")

    @property
    def channels(self) -> int:
        """Number of channels of the output tensor (3 for RGB, 1 for L)."""
        return 3 if self.mode == "RGB" else 1

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """The (C, H, W) shape of every output, or None when it depends on the image."""
        side = self.crop if self.crop is not None else (self.size if self.resize is None else None)
        return None if side is None else (self.channels, side, side)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Return the image as a float32 C×H×W tensor.

        Mode conversion: images with transparency (RGBA, LA, PA, P with a transparent colour) are
        composited on black first; 16/32-bit integer images (I;16*, I) are scaled from 0..65535 to
        0..255 and float images (F) clipped to 0..255 before conversion to ``mode``.
        """
        img = self._convert(img)
        if self.size is not None and img.size != (self.size, self.size):
            suggestion = dataclasses.replace(self, size=None, resize=self.size, crop=self.size).to_spec()
            raise DataError(
                f"image is {img.width}x{img.height} but the transform expects exactly {self.size}x{self.size}; "
                f"resize the file, or create the database with --transform {suggestion} (a database keeps the "
                "transform it was made with, so its profiles stay comparable)"
            )
        mode = InterpolationMode(self.interpolation)
        if self.resize is not None:
            img = F.resize(img, [self.resize], interpolation=mode, antialias=True)
        if self.crop is not None:
            img = F.center_crop(img, [self.crop])
        x = F.to_dtype(F.pil_to_tensor(img), torch.float32, scale=True)
        return F.normalize(x, list(self.mean), list(self.std)).contiguous()

    def _convert(self, img: Image.Image) -> Image.Image:
        if img.mode.startswith("I") or img.mode == "F":
            scale = 1.0 if img.mode == "F" else 257.0
            img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) / scale, 0, 255).round().astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        return img if img.mode == self.mode else img.convert(self.mode)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; ``Transform.from_dict`` inverts it."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transform:
        """Rebuild a Transform from ``to_dict`` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names or {"mode", "mean", "std"} - set(d):
            raise SpecError(f"transform dict {d!r} is malformed; it needs mode, mean, std and only the keys {', '.join(sorted(names))}")
        try:
            return cls(**{"resize": None, "crop": None, "size": None, **d})
        except (TypeError, ValueError) as e:
            raise SpecError(f"transform dict {d!r} is malformed ({e}); mean and std must be lists of numbers") from None

    def to_spec(self) -> str:
        """The key=value spec string that ``Transform.parse`` turns back into this transform."""
        parts = [f"{key}={getattr(self, key)}" for key in _SIDE_KEYS if getattr(self, key) is not None]
        parts += [f"mode={self.mode}", f"mean={'/'.join(map(repr, self.mean))}", f"std={'/'.join(map(repr, self.std))}"]
        if self.interpolation != "bilinear":
            parts.append(f"interpolation={self.interpolation}")
        return ",".join(parts)

    @classmethod
    def preset(cls, name: str) -> Transform:
        """The named preset: ``imagenet``, ``mnist``, ``cifar`` or ``sklearn-digits`` (8x8 grey digits of
        ``builtin:sklearn-digits``; no resizing)."""
        presets = {
            "imagenet": cls("RGB", 256, 224, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            "mnist": cls("L", None, None, 28, (0.1307,), (0.3081,)),
            "cifar": cls("RGB", None, None, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            # mean and std of every pixel of all 1,797 builtin:sklearn-digits images (round(v * 255 / 16)
            # as uint8, then / 255), computed once with numpy (0.305309, 0.375886); 4 significant digits
            "sklearn-digits": cls("L", None, None, 8, (0.3053,), (0.3759,)),
        }
        if name not in presets:
            raise SpecError(f"unknown transform preset {name!r}; use one of {', '.join(presets)}")
        return presets[name]

    @classmethod
    def parse(cls, spec: str) -> Transform:
        """Parse ``imagenet`` / ``mnist`` / ``cifar`` / ``sklearn-digits`` or ``[preset=NAME,]key=value,...``.

        Keys: preset, mode (RGB|L), resize, crop, size (positive int or ``none``), mean and std
        ('/'-separated floats, one per channel) and interpolation. Setting resize or crop drops a
        preset's size and setting size drops its resize and crop.
        """
        items = [item.strip() for item in spec.split(",") if item.strip()]
        if not items:
            raise SpecError(f"transform spec {spec!r} is empty; {_SPEC_HELP}")
        fields: dict[str, str] = {}
        for item in items:
            key, sep, value = item.partition("=")
            key, value = (key.strip(), value.strip()) if sep else ("preset", key)
            if key not in _KEYS:
                raise SpecError(f"transform spec {spec!r}: unknown key {key!r}; valid keys are {', '.join(_KEYS)}")
            if key in fields:
                raise SpecError(f"transform spec {spec!r}: {key} is given twice; give it once")
            fields[key] = value
        try:
            base = cls.preset(fields.pop("preset")).to_dict() if "preset" in fields else {}
            if "size" in fields:
                base.update(resize=None, crop=None)
            elif "resize" in fields or "crop" in fields:
                base["size"] = None
            for key, value in fields.items():
                if key in _SIDE_KEYS:
                    base[key] = None if value.lower() == "none" else int(value)
                elif key in ("mean", "std"):
                    base[key] = tuple(float(v) for v in value.split("/"))
                else:
                    base[key] = value
        except ValueError as e:
            raise SpecError(f"transform spec {spec!r}: bad number ({e}); sides are integers, mean/std are floats like 0.5/0.5/0.5") from None
        except SpecError as e:
            raise SpecError(f"transform spec {spec!r}: {e}") from None
        missing = [key for key in ("mode", "mean", "std") if key not in base]
        if missing:
            raise SpecError(f"transform spec {spec!r}: missing {', '.join(missing)}; {_SPEC_HELP}")
        try:
            return cls.from_dict(base)
        except SpecError as e:
            raise SpecError(f"transform spec {spec!r}: {e}") from None

    @classmethod
    def from_torchvision(cls, weights: Any) -> Transform:
        """The preprocessing of a torchvision weights enum member (reads ``weights.transforms()``; no download)."""
        t = weights.transforms()
        if not all(hasattr(t, a) for a in ("crop_size", "resize_size", "mean", "std", "interpolation")):
            raise SpecError(f"torchvision weights {weights} do not use image-classification preprocessing; pass --transform")
        return cls(
            mode="RGB",
            resize=t.resize_size[0] if t.resize_size else None,
            crop=t.crop_size[0],
            size=None,
            mean=tuple(t.mean),
            std=tuple(t.std),
            interpolation=t.interpolation.value,
        )


def transform_from_dict(d: dict[str, Any]) -> Any:
    """The transform a manifest records: an image ``Transform``, or a text model's ``TokenTransform``
    (``{"kind": "tokens", ...}``, its tokenizer loaded from the model directory)."""
    if isinstance(d, dict) and d.get("kind") == "tokens":
        from saliencydb.data.text import TokenTransform

        return TokenTransform.from_dict(d)
    return Transform.from_dict(d)
