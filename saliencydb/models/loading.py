"""Load a classifier named by a model spec (torchvision, TorchScript or a Python factory) onto the CPU."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.models
from torch import nn

from saliencydb.data.transforms import Transform
from saliencydb.errors import ModelError, SpecError, WeightsUnavailableError

MODEL_SPEC_HELP = "use torchvision:NAME, torchscript:PATH, python:MODULE:FACTORY or the path of a TorchScript file"


@dataclass
class LoadedModel:
    """A classifier in eval mode on the CPU, with where it came from and how to feed it."""

    module: nn.Module
    spec: str
    weights: str | None
    weights_sha256: str
    num_classes: int
    class_names: list[str] | None
    default_transform: Transform | None
    scripted: bool


def _first_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].rstrip(".")


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over the module's state-dict tensors in sorted name order (name, dtype, shape, raw bytes).

    It depends only on the weights, not on the file format they came from; non-tensor extra state is ignored.
    """
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict saved with ``torch.save`` (unwrapping a ``state_dict`` or ``model`` entry), weights-only."""
    if not Path(path).is_file():
        raise SpecError(f"weights file {path} does not exist; give an existing .pt/.pth file with --weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ModelError(
            f"weights file {path} is not a loadable state dict ({_first_sentence(e)}); save one with "
            "torch.save(model.state_dict(), PATH), or pass a TorchScript file as --model torchscript:PATH"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file {path} does not hold a state dict of tensors; save one with torch.save(model.state_dict(), PATH)")
    return dict(obj)


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    problems = [f"{label} {first(keys)}" for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)) if keys]
    problems += [f"shape of {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched[:1]]
    if problems:
        raise ModelError(
            f"weights file {path} does not fit {what}: {'; '.join(problems)}; check that --model is the architecture "
            "the weights were saved from (and --num-classes)"
        )
    module.load_state_dict(state, strict=True)


def _linear_out_features(module: nn.Module) -> int | None:
    """out_features of the last Linear layer (also inside TorchScript modules), or None."""
    found = None
    for m in module.modules():
        if isinstance(m, nn.Linear) or getattr(m, "original_name", None) == "Linear":
            found = int(m.weight.shape[0])
    return found


def _torchvision_weights(name: str, weights: str, enum: Any) -> Any:
    """The weights enum member that ``weights`` (``DEFAULT``, ``IMAGENET1K_V1`` or ``Enum.MEMBER``) names."""
    enum_name, _, member = weights.rpartition(".")
    if enum_name and enum_name != enum.__name__:
        raise SpecError(f"weights {weights} are not for torchvision:{name}; its weights are {enum.__name__}.*")
    try:
        return enum[member]
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise SpecError(
            f"unknown weights {weights!r} for torchvision:{name}; use one of {choices} or the path of a local weights file"
        ) from None


def _load_torchvision(spec: str, name: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name.lower(), names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise SpecError(f"model spec '{spec}': torchvision has no classification model {name!r}; {hint}")
    enum = torchvision.models.get_model_weights(name)
    transform = Transform.from_torchvision(enum.DEFAULT)
    if weights is not None and (Path(weights).is_file() or Path(weights).suffix in (".pt", ".pth", ".bin") or "/" in weights):
        state = read_state_dict(weights)
        n = num_classes or next((v.shape[0] for v in reversed(state.values()) if v.dim() == 2), None)
        if n is None:
            raise ModelError(f"cannot tell the number of classes from {weights} (no 2-D weight); pass --num-classes")
        kwargs: dict[str, Any] = {}
        if name == "inception_v3":
            kwargs = {"init_weights": False, "aux_logits": any(k.startswith("AuxLogits.") for k in state)}
        elif name == "googlenet":
            kwargs = {"init_weights": False, "aux_logits": any(k.startswith(("aux1.", "aux2.")) for k in state)}
        module = torchvision.models.get_model(name, weights=None, num_classes=int(n), **kwargs)
        _load_strict(module, state, weights, f"torchvision:{name} with {n} classes")
        return _finish(module, spec, weights, None, transform, scripted=False, num_classes=int(n))
    member = _torchvision_weights(name, weights or "DEFAULT", enum)
    categories = member.meta.get("categories")
    if num_classes is not None and categories is not None and num_classes != len(categories):
        raise SpecError(
            f"--num-classes {num_classes} does not match the {len(categories)} classes of {member}; "
            "drop --num-classes or pass your own weights file with --weights"
        )
    try:
        module = torchvision.models.get_model(name, weights=member, progress=True)
    except (OSError, RuntimeError) as e:  # urllib.error.URLError is an OSError
        raise WeightsUnavailableError(
            f"could not download torchvision weights {member} ({_first_sentence(e)}; no network?); download "
            f"{member.url} on a machine with internet and pass the file with --weights /path/to/file.pth"
        ) from None
    class_names = None if categories is None else [str(c) for c in categories]
    return _finish(module, spec, str(member), class_names, transform, scripted=False)


def _load_torchscript(spec: str, path: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    if weights is not None:
        raise SpecError(f"model spec '{spec}': a TorchScript file carries its own weights; drop --weights")
    if not Path(path).is_file():
        raise SpecError(f"model spec '{spec}': file {path} does not exist; {MODEL_SPEC_HELP}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError, OSError):
        raise ModelError(
            f"{path} is not a TorchScript file; a state dict needs an architecture: use --model torchvision:NAME "
            "--weights PATH or --model python:module:factory --weights PATH"
        ) from None
    return _finish(module, spec, None, None, None, scripted=True, num_classes=num_classes)


def _import_module(spec: str, target: str) -> Any:
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise SpecError(f"model spec '{spec}': Python file {target} does not exist; give an importable module or an existing .py file")
        unique = "_saliencydb_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        loader_spec = importlib.util.spec_from_file_location(unique, path)
        if loader_spec is None or loader_spec.loader is None:
            raise SpecError(f"model spec '{spec}': cannot import {target} as Python; give a .py file")
        mod = importlib.util.module_from_spec(loader_spec)
        sys.modules[unique] = mod  # dataclasses, pickling and TorchScript look modules up here
        try:
            loader_spec.loader.exec_module(mod)
        except Exception as e:  # the user's module may raise anything while it runs
            del sys.modules[unique]
            raise ModelError(f"model spec '{spec}': importing {target} failed ({type(e).__name__}: {_first_sentence(e)}); fix the file") from None
        return mod
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise SpecError(f"model spec '{spec}': cannot import {target} ({_first_sentence(e)}); give an importable dotted name or a .py path") from None
    except Exception as e:  # the user's module may raise anything while it runs
        raise ModelError(f"model spec '{spec}': importing {target} failed ({type(e).__name__}: {_first_sentence(e)}); fix the module") from None


def _load_python(spec: str, target: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    module_name, sep, factory_name = target.rpartition(":")
    if not sep or not module_name or not factory_name:
        raise SpecError(f"model spec '{spec}': expected python:MODULE:FACTORY, e.g. python:saliencydb.data.zoo:small_cnn")
    factory = getattr(_import_module(spec, module_name), factory_name, None)
    if not callable(factory):
        raise SpecError(f"model spec '{spec}': {module_name} has no callable {factory_name!r}; name a function returning an nn.Module")
    try:
        module = factory() if num_classes is None else factory(num_classes=num_classes)
    except Exception as e:  # the user's factory may raise anything
        raise ModelError(f"model spec '{spec}': {factory_name}() failed ({type(e).__name__}: {_first_sentence(e)}); fix the factory or --num-classes") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"model spec '{spec}': {factory_name}() returned {type(module).__name__}, not a torch.nn.Module")
    module = module.cpu()
    if weights is not None:
        _load_strict(module, read_state_dict(weights), weights, f"{factory_name}()")
    return _finish(module, spec, weights, None, None, scripted=False, num_classes=num_classes)


def _finish(
    module: nn.Module,
    spec: str,
    weights: str | None,
    class_names: list[str] | None,
    transform: Transform | None,
    scripted: bool,
    num_classes: int | None = None,
) -> LoadedModel:
    n = num_classes or (len(class_names) if class_names else None) or _linear_out_features(module)
    if n is None:
        raise ModelError(f"model spec '{spec}': cannot tell the number of classes (no Linear layer); pass --num-classes")
    module.eval()
    return LoadedModel(module, spec, weights, state_dict_sha256(module), n, class_names, transform, scripted)


def model_file(spec: str) -> Path | None:
    """The code file a spec names (a ``python:FILE.py:FACTORY`` module, or a TorchScript file), absolute; else None."""
    kind, _, rest = spec.partition(":")
    if kind == "python":
        target = rest.rpartition(":")[0]
        return Path(target).expanduser().resolve() if target.endswith(".py") or "/" in target else None
    if kind == "torchscript":
        return Path(rest).expanduser().resolve()
    if kind not in ("torchvision",) and Path(spec).is_file():
        return Path(spec).resolve()
    return None


def absolute_spec(spec: str) -> str:
    """``spec`` with its file made absolute, so that it loads from any working directory."""
    path = model_file(spec)
    if path is None:
        return spec
    kind, _, rest = spec.partition(":")
    if kind == "python":
        return f"python:{path}:{rest.rpartition(':')[2]}"
    return f"torchscript:{path}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None) -> LoadedModel:
    """Build the model a spec names, in eval mode on the CPU (see ``MODEL_SPEC_HELP``).

    ``weights`` is a torchvision weights name (torchvision: only; default DEFAULT) or a local state-dict file.
    """
    if num_classes is not None and num_classes <= 0:
        raise SpecError(f"--num-classes {num_classes} must be a positive integer")
    kind, sep, rest = spec.partition(":")
    if sep and kind == "torchvision" and rest:
        return _load_torchvision(spec, rest, weights, num_classes)
    if sep and kind == "torchscript" and rest:
        return _load_torchscript(spec, rest, weights, num_classes)
    if sep and kind == "python" and rest:
        return _load_python(spec, rest, weights, num_classes)
    if Path(spec).is_file():
        return _load_torchscript(spec, spec, weights, num_classes)
    raise SpecError(f"model spec '{spec}': not a known kind or an existing file; {MODEL_SPEC_HELP}")
