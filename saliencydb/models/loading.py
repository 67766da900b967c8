"""Load a classifier named by a model spec (torchvision, timm, a Hugging Face directory, TorchScript or a
Python factory) onto the CPU."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import math
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

from .names import check_count, checkpoint_names, module_names, timm_names

MODEL_SPEC_HELP = ("use torchvision:NAME, timm:NAME, hf:DIR (a save_pretrained directory), torchscript:PATH, "
                   "python:MODULE:FACTORY or the path of a TorchScript file")
_WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Hugging Face tasks by the suffix of the class a config's ``architectures`` names
HF_TASKS = {"ForImageClassification": "image-classification", "ForSequenceClassification": "sequence-classification",
            "ForMaskedLM": "masked-lm"}
_HF_TEXT_TASKS = ("sequence-classification", "masked-lm")


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
    transform_source: str | None = None  # where default_transform comes from, said by `info` (a guess says so)
    random_seed: int | None = None  # weights drawn at random under this seed (--random-weights), re-drawn on reload

    @property
    def modality(self) -> str:
        """What the model reads: "image", or "text" (token tensors, ``models.text``)."""
        return getattr(self.module, "modality", "image")


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
    return read_checkpoint(path)[0]


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """A weights file's state dict (``read_state_dict``) and the class names stored beside it, if any
    (``models.names.checkpoint_names``: ``class_names``, ``classes``, ``idx_to_class``, ...)."""
    if not Path(path).is_file():
        raise SpecError(f"weights file {path} does not exist; give an existing .pt/.pth file with --weights")
    if path.endswith(".safetensors"):
        return _read_safetensors(path), None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ModelError(
            f"weights file {path} is not a loadable state dict ({_first_sentence(e)}); save one with "
            "torch.save(model.state_dict(), PATH), or pass a TorchScript file as --model torchscript:PATH"
        ) from None
    names = None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            names = checkpoint_names(obj, path)
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file {path} does not hold a state dict of tensors; save one with torch.save(model.state_dict(), PATH)")
    return dict(obj), names


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise SpecError(f"weights file {path} is a safetensors file, which needs safetensors: pip install safetensors") from None
    try:
        state = load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
        raise ModelError(f"weights file {path} is not a loadable safetensors file ({_first_sentence(e)})") from None
    if not state:
        raise ModelError(f"weights file {path} holds no tensors; save one with safetensors.torch.save_file(model.state_dict(), PATH)")
    return dict(state)


def _is_weights_file(weights: str) -> bool:
    """Whether ``--weights`` names a local file (else it is a name of published weights)."""
    return Path(weights).is_file() or Path(weights).suffix in _WEIGHTS_SUFFIXES or "/" in weights


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


def _seeded(seed: int, build: Any) -> nn.Module:
    """``build()`` with torch's CPU generator seeded with ``seed`` (and the caller's generator state restored):
    the same seed gives the same random weights, on any machine with this torch version."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _published_file(enum: Any, path: str) -> Any:
    """The torchvision weights member whose published file ``path`` is (its URL names the first hex digits
    of the file's sha256, as torch.hub checks them), or None."""
    digest = file_sha256(Path(path))
    for member in enum:
        tail = Path(str(member.url)).stem.rpartition("-")[2]
        if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) and digest.startswith(tail):
            return member
    return None


def check_reference_weights(spec: str, weights: str | None, stats: str) -> None:
    """``--stats reference:NAME`` were computed with torchvision's IMAGENET1K_V1 weights: published weights
    of another recipe (ResNet-50's DEFAULT is IMAGENET1K_V2) are refused before anything is downloaded."""
    kind, _, name = spec.partition(":")
    if kind != "torchvision" or weights is None or _is_weights_file(weights):
        return
    try:
        enum = torchvision.models.get_model_weights(name)
        member = enum[weights.rpartition(".")[2]]
    except (ValueError, KeyError):
        return  # not a torchvision model or weights name: the loader says so
    if member is not getattr(enum, "IMAGENET1K_V1", None):
        raise SpecError(f"--stats reference:{stats} were computed with torchvision's IMAGENET1K_V1 weights, not {member}; "
                        "pass --weights IMAGENET1K_V1 (or a copy of that file), or drop --stats to compute statistics "
                        "of these weights")


def _torchvision_guess(enum: Any, why: str) -> tuple[Transform, str]:
    """The transform of torchvision's first published weights of an architecture (the original recipe,
    IMAGENET1K_V1 for the ImageNet classifiers), as a stated guess."""
    first = next(iter(enum))
    return Transform.from_torchvision(first), (f"a guess for {why}: the preprocessing of torchvision's {first} "
                                               "(pass --transform if the model was trained on other inputs)")


def _tv_kwargs(name: str, state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """Constructor arguments of the two torchvision models with auxiliary heads (and their own init)."""
    if name == "inception_v3":
        return {"init_weights": state is None, "aux_logits": state is None or any(k.startswith("AuxLogits.") for k in state)}
    if name == "googlenet":
        return {"init_weights": state is None, "aux_logits": state is None or any(k.startswith(("aux1.", "aux2.")) for k in state)}
    return {}


def _load_torchvision(spec: str, name: str, weights: str | None, num_classes: int | None,
                      random_seed: int | None = None) -> LoadedModel:
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name.lower(), names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise SpecError(f"model spec '{spec}': torchvision has no classification model {name!r}; {hint}")
    enum = torchvision.models.get_model_weights(name)
    if random_seed is not None:
        module = _seeded(random_seed, lambda: torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000,
                                                                          **_tv_kwargs(name, None)))
        transform, said = _torchvision_guess(enum, "random weights")
        return _finish(module, spec, None, None, transform, scripted=False, transform_source=said, random_seed=random_seed)
    if weights is not None and _is_weights_file(weights):
        return _load_torchvision_file(spec, name, enum, weights, num_classes)
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
    return _finish(module, spec, str(member), class_names, Transform.from_torchvision(member), scripted=False,
                   transform_source=f"the weights' own: torchvision's {member} preprocessing")


def _load_torchvision_file(spec: str, name: str, enum: Any, weights: str, num_classes: int | None) -> LoadedModel:
    """A torchvision architecture with a local weights file: the file's class names, else the categories of
    the published weights it is a copy of; its transform that file's recipe, else a stated guess."""
    state, stored_names = read_checkpoint(weights)
    n = num_classes or next((v.shape[0] for v in reversed(state.values()) if v.dim() == 2), None)
    if n is None:
        raise ModelError(f"cannot tell the number of classes from {weights} (no 2-D weight); pass --num-classes")
    module = torchvision.models.get_model(name, weights=None, num_classes=int(n), **_tv_kwargs(name, state))
    _load_strict(module, state, weights, f"torchvision:{name} with {n} classes")
    member = _published_file(enum, weights)
    if member is not None:
        transform, said = Transform.from_torchvision(member), f"the weights' own: the file is torchvision's {member}"
        categories = member.meta.get("categories")
        stored_names = stored_names or (list(map(str, categories)) if categories and len(categories) == n else None)
    else:
        transform, said = _torchvision_guess(enum, "a local weights file")
    return _finish(module, spec, weights, check_count(stored_names, int(n), f"weights file {weights}"), transform,
                   scripted=False, num_classes=int(n), transform_source=said)


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


def _load_python(spec: str, target: str, weights: str | None, num_classes: int | None,
                 random_seed: int | None = None) -> LoadedModel:
    module_name, sep, factory_name = target.rpartition(":")
    if not sep or not module_name or not factory_name:
        raise SpecError(f"model spec '{spec}': expected python:MODULE:FACTORY, e.g. python:saliencydb.data.zoo:small_cnn")
    factory = getattr(_import_module(spec, module_name), factory_name, None)
    if not callable(factory):
        raise SpecError(f"model spec '{spec}': {module_name} has no callable {factory_name!r}; name a function returning an nn.Module")
    build = (lambda: factory()) if num_classes is None else (lambda: factory(num_classes=num_classes))
    try:
        module = build() if random_seed is None else _seeded(random_seed, build)
    except Exception as e:  # the user's factory may raise anything
        raise ModelError(f"model spec '{spec}': {factory_name}() failed ({type(e).__name__}: {_first_sentence(e)}); fix the factory or --num-classes") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"model spec '{spec}': {factory_name}() returned {type(module).__name__}, not a torch.nn.Module")
    module = module.cpu()
    names = module_names(module)
    if weights is not None:
        state, stored = read_checkpoint(weights)
        _load_strict(module, state, weights, f"{factory_name}()")
        names = stored or names
    return _finish(module, spec, weights, names, None, scripted=False, num_classes=num_classes, random_seed=random_seed)


def _import_extra(spec: str, package: str, extra: str) -> Any:
    """The optional package a spec kind needs, or a one-line SpecError naming the extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise SpecError(f"model spec '{spec}' needs {package}: pip install 'saliencydb[{extra}]'") from None


def _timm_arch(spec: str, timm: Any, name: str) -> tuple[str, str]:
    """(architecture, pretrained tag or '') of a timm name such as ``resnet18`` or ``resnet18.a1_in1k``."""
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch.lower(), timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        stem = "".join(c for c in arch.lower().split("_")[0] if c.isalpha()) or "resnet"
        raise SpecError(f"model spec '{spec}': timm has no model {arch!r}; {hint}list the names with timm.list_models('*{stem}*')")
    if tag and f"{arch}.{tag}" not in timm.list_pretrained(f"{arch}.*"):
        raise SpecError(f"model spec '{spec}': timm has no pretrained tag {tag!r} for {arch}; list them with timm.list_pretrained('{arch}.*')")
    return arch, tag


def _timm_pretrained_name(spec: str, timm: Any, arch: str, tag: str, weights: str) -> str:
    """``arch.tag`` of the published weights that ``--weights`` (DEFAULT, a tag, or arch.tag) names."""
    tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*") if n.partition(".")[0] == arch]
    if not tags:
        raise SpecError(f"timm:{arch} has no published pretrained weights; pass a local state-dict file with --weights")
    wanted_arch, _, wanted = weights.rpartition(".")
    if wanted_arch and wanted_arch != arch:
        raise SpecError(f"weights {weights} are not for timm:{arch}; its weights are {arch}.*")
    if wanted == "DEFAULT":
        wanted = tag or timm.models.get_pretrained_cfg(arch).tag
    if tag and wanted != tag:
        raise SpecError(f"model spec '{spec}' names the pretrained tag {tag}, but --weights names {weights}; give one of them")
    if wanted not in tags:
        shown = ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "")
        raise SpecError(f"unknown weights {weights!r} for {spec}; use DEFAULT, one of {shown} or the path of a local weights file")
    return f"{arch}.{wanted}"


def _timm_transform(module: nn.Module) -> Transform | None:
    """timm's evaluation preprocessing of ``module``: shorter side to floor(side / crop_pct), centre crop to side."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=module)
    channels, side = int(cfg["input_size"][0]), int(cfg["input_size"][1])
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in ("nearest", "bilinear", "bicubic") else "bilinear"
    try:
        return Transform(mode="L" if channels == 1 else "RGB", resize=math.floor(side / (cfg.get("crop_pct") or 0.875)),
                         crop=side, size=None, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), interpolation=interpolation)
    except SpecError:  # e.g. a mean with another number of channels: the user passes --transform
        return None


def _load_timm_pretrained(spec: str, timm: Any, full: str, num_classes: int | None) -> LoadedModel:
    cfg = timm.models.get_pretrained_cfg(full)
    if num_classes is not None and cfg.num_classes and num_classes != cfg.num_classes:
        raise SpecError(f"--num-classes {num_classes} does not match the {cfg.num_classes} classes of timm weights {full}; "
                        "drop --num-classes or pass your own weights file with --weights")
    try:
        module = timm.create_model(full, pretrained=True)
    except Exception as e:  # hub and URL downloads raise many types (OSError, RuntimeError, hub errors, ...)
        where = (f"model.safetensors of https://huggingface.co/{cfg.hf_hub_id}", "model.safetensors") if cfg.hf_hub_id \
            else (cfg.url or "them", "file.pth")
        raise WeightsUnavailableError(
            f"could not download timm weights {full} ({_first_sentence(e)}; no network?); download {where[0]} "
            f"on a machine with internet and pass the file with --weights /path/to/{where[1]}"
        ) from None
    return _finish(module, spec, full, timm_names(module), _timm_transform(module), scripted=False,
                   num_classes=int(module.num_classes), transform_source=f"the weights' own: timm's pretrained config of {full}")


def _timm_classes_of(timm: Any, arch: str, state: dict[str, torch.Tensor]) -> int | None:
    """The number of classes of a timm state dict: rows of its classifier weight (else of its last 2-D tensor)."""
    classifier = timm.models.get_pretrained_cfg(arch).classifier if timm.list_pretrained(f"{arch}.*") else None
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    if classifier and f"{classifier}.weight" in state:
        return int(state[f"{classifier}.weight"].shape[0])
    return next((int(v.shape[0]) for v in reversed(state.values()) if v.dim() == 2), None)


def _load_timm(spec: str, name: str, weights: str | None, num_classes: int | None,
               random_seed: int | None = None) -> LoadedModel:
    timm = _import_extra(spec, "timm", "timm")
    arch, tag = _timm_arch(spec, timm, name)
    if weights is not None and not _is_weights_file(weights):
        return _load_timm_pretrained(spec, timm, _timm_pretrained_name(spec, timm, arch, tag, weights), num_classes)
    state, names = read_checkpoint(weights) if weights is not None else (None, None)
    n = num_classes or (_timm_classes_of(timm, arch, state) if state is not None else None)
    build = lambda: timm.create_model(name, pretrained=False, **({} if n is None else {"num_classes": n}))  # noqa: E731
    try:
        module = build() if random_seed is None else _seeded(random_seed, build)
    except Exception as e:  # a model's constructor may raise anything for arguments it does not take
        raise ModelError(f"model spec '{spec}': timm.create_model({name!r}) failed ({type(e).__name__}: {_first_sentence(e)})") from None
    if state is not None:
        _load_strict(module, state, str(weights), f"timm:{name} with {module.num_classes} classes")
    said = (f"a guess for {'a local weights file' if weights else 'random weights'}: timm's pretrained config of "
            f"{module.pretrained_cfg.get('architecture', arch)}.{module.pretrained_cfg.get('tag') or ''} (pass --transform "
            "if the model was trained on other inputs)")
    return _finish(module, spec, weights, check_count(names, int(module.num_classes), f"weights file {weights}"),
                   _timm_transform(module), scripted=False, num_classes=int(module.num_classes), transform_source=said,
                   random_seed=random_seed)


class HFImageClassifier(nn.Module):
    """A Hugging Face image classifier as a plain classifier: pixels in, the logits tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _hf_local(rest: str) -> bool:
    """Whether an hf: spec names a local directory (a Hub id is ``name`` or ``owner/name`` that does not exist here)."""
    return rest.startswith(("/", ".", "~")) or rest.count("/") > 1 or "\\" in rest or Path(rest).expanduser().exists()


def _hf_source(spec: str, rest: str) -> str:
    """The absolute directory, or the Hub id, that an hf: spec names."""
    path = Path(rest).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise SpecError(f"model spec '{spec}': {rest} is a file; give the directory that save_pretrained wrote")
    if _hf_local(rest):
        raise SpecError(f"model spec '{spec}': directory {rest} does not exist; give a directory made by "
                        "model.save_pretrained(DIR) (or, online, a Hub id such as google/vit-base-patch16-224)")
    return rest


def _hf_config(spec: str, transformers: Any, source: str) -> Any:
    try:
        return transformers.AutoConfig.from_pretrained(source)
    except Exception as e:  # transformers and the hub raise many types (OSError, ValueError, hub errors, ...)
        if Path(source).is_dir():
            raise SpecError(f"model spec '{spec}': {source} is not a Hugging Face model directory ({_first_sentence(e)}); "
                            "make one with model.save_pretrained(DIR)") from None
        raise WeightsUnavailableError(
            f"model spec '{spec}': could not fetch {source} from the Hugging Face Hub ({_first_sentence(e)}; no network?); "
            f"on a machine with internet save it with AutoModelForImageClassification.from_pretrained('{source}')"
            ".save_pretrained(DIR) (and its AutoImageProcessor likewise), then use --model hf:DIR"
        ) from None


def _hf_task(spec: str, config: Any, task: str | None) -> str:
    """The task of an hf: model: the one its config's architectures name; ``task``, when given, must agree."""
    archs = [str(a) for a in getattr(config, "architectures", None) or []]
    found = [t for a in archs for suffix, t in HF_TASKS.items() if a.endswith(suffix)]
    if task is not None and task not in ("image-classification",) + _HF_TEXT_TASKS:
        raise SpecError(f"model spec '{spec}': unknown task {task!r}; use image-classification, "
                        f"{' or '.join(_HF_TEXT_TASKS)}")
    if task is not None and found and task not in found:
        raise SpecError(f"model spec '{spec}': its config names {', '.join(archs)} ({found[0]}); --task {task} would "
                        f"load it with layers it does not have; use --task {found[0]} (or omit --task)")
    if task is None and not found:
        raise SpecError(f"model spec '{spec}': its config names no classifier ({', '.join(archs) or 'no architectures'}); "
                        "save a ...ForImageClassification, ...ForSequenceClassification or ...ForMaskedLM model with "
                        "save_pretrained, or name the task with --task")
    return task or found[0]


def _hf_class_names(config: Any) -> list[str] | None:
    """The config's labels in id order, unless they are the placeholder names LABEL_0, LABEL_1, ..."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(i) for i in range(int(config.num_labels))]
    if any(n is None for n in names) or names == [f"LABEL_{i}" for i in range(len(names))]:
        return None
    return [str(n) for n in names]


_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _square_side(size: Any) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, Mapping) and size.get("height") and size.get("height") == size.get("width"):
        return int(size["height"])
    return None


def _processor_sides(d: Mapping[str, Any]) -> tuple[int | None, int | None] | None:
    """(resize of the shorter side, centre crop) of an image processor's settings; None when they are not of that form."""
    crop = _square_side(d.get("crop_size")) if d.get("do_center_crop") else None
    if d.get("do_center_crop") and d.get("crop_size") and crop is None:
        return None
    size = d.get("size") if d.get("do_resize", True) else None
    size = {"shortest_edge": size} if isinstance(size, int) else dict(size or {})
    if size.get("height") or size.get("width"):  # resized to exactly height x width: resize + crop for square images
        side = _square_side(size)
        return None if side is None else (side, crop or side)
    if size.get("shortest_edge"):
        side = int(size["shortest_edge"])
        if crop is None and d.get("crop_pct"):  # ConvNeXt: shorter side to side / crop_pct, then crop (a warp from 384 up)
            return (int(side / d["crop_pct"]) if side < 384 else side), side
        return side, crop
    return None if any(size.values()) else (None, crop)


def _processor_transform(d: Mapping[str, Any], channels: int) -> Transform | None:
    """A saliencydb Transform doing what an image processor's settings (``to_dict()``) do; None when it cannot."""
    sides = _processor_sides(d)  # a Transform scales pixels to [0, 1]: the processor must rescale by 1/255
    if sides is None or not d.get("do_rescale", True) or not math.isclose(float(d.get("rescale_factor") or 0), 1 / 255):
        return None
    mean, std = (d.get("image_mean"), d.get("image_std")) if d.get("do_normalize", True) else (0.0, 1.0)
    mean, std = ((v,) * channels if isinstance(v, (int, float)) else tuple(v) for v in (mean, std))
    resample = d.get("resample")
    try:
        return Transform(mode="L" if channels == 1 else "RGB", resize=sides[0], crop=sides[1], size=None, mean=mean, std=std,
                         interpolation=_PIL_RESAMPLE.get(int(resample) if resample is not None else 2, "bilinear"))
    except SpecError:
        return None


def _hf_transform(transformers: Any, source: str, config: Any) -> Transform | None:
    """The preprocessing of the image processor saved with the model; None without one (the user passes --transform)."""
    if Path(source).is_dir() and not (Path(source) / "preprocessor_config.json").is_file():
        return None
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(source)
    except Exception:  # no processor, or one transformers cannot build: no default transform
        return None
    return _processor_transform(processor.to_dict(), int(getattr(config, "num_channels", 3) or 3))


def _load_hf(spec: str, rest: str, weights: str | None, num_classes: int | None, task: str | None = None,
             random_seed: int | None = None) -> LoadedModel:
    if weights is not None:
        raise SpecError(f"model spec '{spec}': a Hugging Face model directory carries its own weights; drop --weights")
    transformers = _import_extra(spec, "transformers", "hf")
    source = _hf_source(spec, rest)
    config = _hf_config(spec, transformers, source)
    task = _hf_task(spec, config, task)
    if task in _HF_TEXT_TASKS:
        from .text import load_hf_text

        module, transform, n, names = load_hf_text(spec, transformers, source, config, task, random_seed)
        if num_classes is not None and num_classes != n:
            raise SpecError(f"--num-classes {num_classes} does not match the {n} outputs of {spec}; drop --num-classes")
        names = names if task == "masked-lm" else _hf_class_names(config)  # a classifier's id2label, in id order
        return _finish(module, spec, None, names, transform, scripted=False, num_classes=n,
                       transform_source=f"the tokenizer saved in {source}", random_seed=random_seed)
    if num_classes is not None and num_classes != int(config.num_labels):
        raise SpecError(f"--num-classes {num_classes} does not match the {config.num_labels} labels of {spec}; drop --num-classes")
    auto = transformers.AutoModelForImageClassification
    try:  # float32, and eager attention: per-sample and input gradients differentiate through every op
        model = auto.from_pretrained(source, dtype=torch.float32, attn_implementation="eager") if random_seed is None else \
            _seeded(random_seed, lambda: auto.from_config(config, attn_implementation="eager").float())
    except Exception as e:  # transformers raises many types (OSError, ValueError, hub errors, ...)
        error = ModelError if Path(source).is_dir() else WeightsUnavailableError
        raise error(f"model spec '{spec}': loading the image classifier from {source} failed ({type(e).__name__}: {_first_sentence(e)})") from None
    transform = _hf_transform(transformers, source, config)
    return _finish(HFImageClassifier(model), spec, None, _hf_class_names(config), transform, scripted=False,
                   num_classes=int(config.num_labels), transform_source=f"the image processor saved in {source}",
                   random_seed=random_seed)


def _finish(
    module: nn.Module,
    spec: str,
    weights: str | None,
    class_names: list[str] | None,
    transform: Transform | None,
    scripted: bool,
    num_classes: int | None = None,
    transform_source: str | None = None,
    random_seed: int | None = None,
) -> LoadedModel:
    n = num_classes or (len(class_names) if class_names else None) or _linear_out_features(module)
    if n is None:
        raise ModelError(f"model spec '{spec}': cannot tell the number of classes (no Linear layer); pass --num-classes")
    if class_names is not None and len(class_names) != n:  # e.g. a factory's class_names of another head
        class_names = None
    module.eval()
    return LoadedModel(module, spec, weights, state_dict_sha256(module), n, class_names, transform, scripted,
                       transform_source=transform_source if transform is not None else None, random_seed=random_seed)


def model_file(spec: str) -> Path | None:
    """The code file a spec names (a ``python:FILE.py:FACTORY`` module, a TorchScript file, or an ``hf:`` model's
    directory), absolute; else None (also for an ``hf:`` Hub id)."""
    kind, _, rest = spec.partition(":")
    if kind == "hf":
        return Path(rest).expanduser().resolve() if rest and _hf_local(rest) else None
    if kind == "python":
        target = rest.rpartition(":")[0]
        return Path(target).expanduser().resolve() if target.endswith(".py") or "/" in target else None
    if kind == "torchscript":
        return Path(rest).expanduser().resolve()
    if kind not in ("torchvision", "timm") and Path(spec).is_file():
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
    if kind == "hf":
        return f"hf:{path}"
    return f"torchscript:{path}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None, task: str | None = None,
               random_seed: int | None = None) -> LoadedModel:
    """Build the model a spec names, in eval mode on the CPU (see ``MODEL_SPEC_HELP``).

    ``weights`` is a local state-dict file, or the name of published weights: a torchvision weights name
    (default DEFAULT, downloaded) or a timm pretrained tag (DEFAULT, TAG or NAME.TAG; downloaded, so online
    only). Without weights a timm model, or a torchvision model given ``random_seed``, is initialised at
    random. ``random_seed`` draws every weight at random under that seed, never downloading, for any spec
    but a TorchScript file (the same seed gives the same weights: a database re-creates its model from it).
    ``task`` (hf: only; default: the one the config's architectures name) is ``image-classification``,
    ``sequence-classification`` or ``masked-lm`` (``models.text``: token tensors in, the tokenizer as the
    default transform).
    """
    if num_classes is not None and num_classes <= 0:
        raise SpecError(f"--num-classes {num_classes} must be a positive integer")
    kind, sep, rest = spec.partition(":")
    if task is not None and kind != "hf":
        raise SpecError(f"model spec '{spec}': a task is chosen only for hf: models; drop it")
    if random_seed is not None and weights is not None:
        raise SpecError(f"model spec '{spec}': --random-weights draws the weights; drop --weights (or --random-weights)")
    if sep and kind == "hf" and rest:
        return _load_hf(spec, rest, weights, num_classes, task, random_seed)
    if sep and kind == "timm" and rest:
        return _load_timm(spec, rest, weights, num_classes, random_seed)
    if sep and kind == "torchvision" and rest:
        return _load_torchvision(spec, rest, weights, num_classes, random_seed)
    if sep and kind == "python" and rest:
        return _load_python(spec, rest, weights, num_classes, random_seed)
    if (sep and kind == "torchscript" and rest) or Path(spec).is_file():
        if random_seed is not None:
            raise SpecError(f"model spec '{spec}': a TorchScript file carries its own weights; drop --random-weights")
        return _load_torchscript(spec, rest if kind == "torchscript" and rest else spec, weights, num_classes)
    raise SpecError(f"model spec '{spec}': not a known kind or an existing file; {MODEL_SPEC_HELP}")
