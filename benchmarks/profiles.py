"""Throughput and memory of per-sample saliency profiles: loop vs engine vs train step vs vmap.

For each case (model, input side, batch size) it measures, on the same random batch
(random weights, random inputs, random labels, fixed seed, model in eval mode):

  loop        ``reference_profiles``: one forward + backward per sample (the baseline)
  engine      ``ProfileEngine.profile``: what ``saliencydb index`` runs
  engine_rms  the same engine with the approximate ``rms`` aggregate (``index --aggregate rms``);
              its agreement with ``engine`` (rank correlation, top-10 overlap of the
              batch-standardised profiles) is printed beside its speed
  train_step  one batched forward + backward of the mean cross-entropy w.r.t. all
              parameters (eval mode too): the ceiling for any per-sample method
  vmap        ``torch.func``: ``vmap(grad(functional_call ...))`` per-sample gradients of
              the 4-D conv weights, reduced like the engine, in chunks of the batch

and prints samples/s, ratios, peak memory and the agreement of engine and vmap with the
loop. Text cases (BERT built from its config with random weights, wrapped as
``saliencydb.models.text.HFTextModel``) take token tensors (B, 2, L); their "size" is the
sequence length L, their units the linear layers, and vmap is skipped for them.
Run ``python benchmarks/profiles.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout

from saliencydb.data.zoo import small_cnn  # noqa: E402
from saliencydb.memory import keep_freed_memory  # noqa: E402
from saliencydb.saliency import ProfileEngine, UnitLayout, reference_profiles  # noqa: E402
from machine import cpu_name, usable_cores  # noqa: E402 - benchmarks/machine.py, beside this script

TIMM_MODELS = ("vit_tiny_patch16_224", "convnext_atto")  # built with timm (pretrained=False)
# BERT built with transformers from its config (random weights, eager attention, never downloaded):
# name -> (task, hidden size, layers, heads). bert_small is google/bert_uncased_L-4_H-512_A-8,
# bert_tiny google/bert_uncased_L-2_H-128_A-2 (a smoke-test size); both with BERT's uncased vocabulary.
TEXT_MODELS = {
    "bert_small": ("sequence-classification", 512, 4, 8),
    "bert_small_mlm": ("masked-lm", 512, 4, 8),
    "bert_tiny": ("sequence-classification", 128, 2, 2),
    "bert_tiny_mlm": ("masked-lm", 128, 2, 2),
}
BERT_VOCAB = 30522
BERT_MAX_LENGTH = 512  # max_position_embeddings
BERT_PAD_ID, BERT_MASK_ID = 0, 103  # [PAD], [MASK] of the uncased vocabulary
TEXT_FIRST_ID = 5  # random token ids are drawn from [TEXT_FIRST_ID, vocab): no special tokens below it
TEXT_LABELS = 2  # sequence classifiers: 2 classes
MODELS = ("resnet18", "resnet50", "vgg19", "densenet121", "mobilenet_v3_small", "inception_v3", "small_cnn") + TIMM_MODELS
MODELS += tuple(TEXT_MODELS)
METHODS = ("loop", "engine", "engine_rms", "train_step", "vmap")
DEFAULT_SIZE = {"small_cnn": 28, "inception_v3": 299, **{name: 128 for name in TEXT_MODELS}}  # others: 224
PADDINGS = ("none", "half")  # text cases: every row full, or every second row with only L/2 real tokens
DEFAULT_BATCH = 32
CPU_LARGE_SIZE = 224  # on CPU, cases at least this large default to the two values below
CPU_LARGE_BATCH = 16
CPU_LARGE_LOOP_SAMPLES = 8
# (model, size, batch or None = DEFAULT_BATCH / the CPU rule above)
DEFAULT_CASES = (("resnet18", 32, None), ("resnet18", 64, None), ("resnet18", 224, None), ("resnet50", 224, None), ("small_cnn", 28, 64))
QUICK_CASES = (("small_cnn", 28, 8), ("resnet18", 32, 4))
VMAP_BUDGET_BYTES = 512 * 2**20  # auto chunk: per-sample conv-weight gradients of one chunk
RSS_INTERVAL_S = 0.002
MIN_CPU_WINDOW_S = 1.0  # shortest timed wall time over which the CPU use of other processes is judged
BUSY_SHARE = 0.05  # rows timed while other processes used more of the CPUs than this are flagged
INCEPTION_MIN_SIZE = 75
IMAGENET_VAL = 50_000


# -- cases and models ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    model: str
    size: int  # image side in px, or a text case's sequence length
    batch: int
    loop_samples: int
    padding: str = "none"  # text cases only: see PADDINGS

    @property
    def label(self) -> str:
        return case_label(asdict(self))


def is_text(name: str) -> bool:
    return name in TEXT_MODELS


def case_label(case: dict) -> str:
    """``resnet18@224 b16``; text cases ``bert_small@L128 b32``, ``... b32 half-padded``."""
    if not is_text(case["model"]):
        return f"{case['model']}@{case['size']} b{case['batch']}"
    padded = " half-padded" if case.get("padding", "none") == "half" else ""
    return f"{case['model']}@L{case['size']} b{case['batch']}{padded}"


def num_classes_for(name: str, size: int) -> int:
    """small_cnn: 10 (MNIST). torchvision models: 1000 at ImageNet sizes (>= 224 px), else 10."""
    if name == "small_cnn":
        return 10
    return 1000 if size >= 224 else 10


def build_text_model(name: str) -> tuple[nn.Module, int]:
    """A BERT of TEXT_MODELS with random weights, wrapped to take (B, 2, L) token tensors; and its classes."""
    import transformers

    from saliencydb.models.text import HFTextModel

    task, hidden, layers, heads = TEXT_MODELS[name]
    config = transformers.BertConfig(
        vocab_size=BERT_VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=BERT_MAX_LENGTH, pad_token_id=BERT_PAD_ID,
        num_labels=TEXT_LABELS,
    )
    config._attn_implementation = "eager"  # as saliencydb loads Hugging Face models
    if task == "masked-lm":
        model = transformers.BertForMaskedLM(config)
        return HFTextModel(model, task, BERT_PAD_ID, BERT_MASK_ID).eval(), BERT_VOCAB
    model = transformers.BertForSequenceClassification(config)
    return HFTextModel(model, task, BERT_PAD_ID, None).eval(), TEXT_LABELS


def text_batch(name: str, length: int, batch: int, classes: int, padding: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids in [TEXT_FIRST_ID, vocab) over an attention mask, as (B, 2, L) int64, and random labels.

    padding "half": every second row has only max(1, L // 2) real tokens. A masked-LM gets one
    [MASK] per row at a random real position, and random vocabulary ids as labels.
    """
    ids = torch.randint(TEXT_FIRST_ID, BERT_VOCAB, (batch, length), generator=gen)
    real = torch.full((batch,), length)
    if padding == "half":
        real[1::2] = max(1, length // 2)
    mask = (torch.arange(length) < real[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, BERT_PAD_ID))
    if TEXT_MODELS[name][0] == "masked-lm":
        ids = torch.where(ids == BERT_MASK_ID, ids + 1, ids)  # the only [MASK] is the one placed below
        at = (torch.rand(batch, generator=gen) * real).long()
        ids[torch.arange(batch), at] = BERT_MASK_ID
    y = torch.randint(0, classes, (batch,), generator=gen)
    return torch.stack([ids, mask], 1), y


def build_model(name: str, size: int) -> tuple[nn.Module, int | None, int]:
    """(model in eval mode with random weights, input channels (None for text), classes)."""
    if is_text(name):
        model, classes = build_text_model(name)
        return model, None, classes
    classes = num_classes_for(name, size)
    if name == "small_cnn":
        return small_cnn(num_classes=classes).eval(), 1, classes
    if name in TIMM_MODELS:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=classes).eval(), 3, classes
    kwargs = {"weights": None, "num_classes": classes}
    if name == "inception_v3":
        kwargs.update(aux_logits=False, init_weights=False)
    return torchvision.models.get_model(name, **kwargs).eval(), 3, classes


def resolve_cases(args: argparse.Namespace, device: torch.device, parser: argparse.ArgumentParser) -> list[Case]:
    """The cases asked for on the command line (or the quick / default set)."""
    specs: list[tuple[str, int, int | None]] = []
    for text in args.case or []:
        parts = text.split(":")
        if len(parts) not in (2, 3) or parts[0] not in MODELS or not all(p.isdigit() for p in parts[1:]):
            parser.error(f"--case {text!r}: expected MODEL:SIZE[:BATCH] with MODEL one of {', '.join(MODELS)}")
        specs.append((parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None))
    if args.size and not args.model:
        parser.error("--size needs --model (or use --case MODEL:SIZE:BATCH)")
    for name in args.model or []:
        for size in args.size or [DEFAULT_SIZE.get(name, 224)]:
            specs.append((name, size, None))
    if not specs:
        specs = list(QUICK_CASES if args.quick else DEFAULT_CASES)

    cases = []
    for name, size, batch in specs:
        if name == "inception_v3" and size < INCEPTION_MIN_SIZE:
            parser.error(f"inception_v3 needs an input side >= {INCEPTION_MIN_SIZE} (got {size})")
        if is_text(name) and not 1 <= size <= BERT_MAX_LENGTH:
            parser.error(f"{name} takes sequence lengths 1 to {BERT_MAX_LENGTH} (got {size})")
        large_on_cpu = device.type == "cpu" and size >= CPU_LARGE_SIZE and not is_text(name)  # image sizes only
        if batch is None:
            batch = args.batch_size or (CPU_LARGE_BATCH if large_on_cpu else DEFAULT_BATCH)
        loop = args.loop_samples or (CPU_LARGE_LOOP_SAMPLES if large_on_cpu else batch)
        if batch < 1 or size < 1:
            parser.error(f"case {name}:{size}:{batch}: size and batch must be positive")
        cases.append(Case(name, size, batch, max(1, min(loop, batch)), args.text_padding if is_text(name) else "none"))
    return cases


# -- the four methods --------------------------------------------------------------------------


def _logits(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def vmap_chunk_size(n_conv_params: int, batch: int, requested: int) -> int:
    if requested > 0:
        return min(requested, batch)
    return max(1, min(batch, VMAP_BUDGET_BYTES // max(1, 4 * n_conv_params)))


def make_vmap_profiles(model: nn.Module, layout: UnitLayout, chunk: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(x, y) -> (B, U) by ``vmap(grad(...))`` over the batch, reduced to mean |g| per filter inside the vmap."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    conv = {layer.param_name: params.pop(layer.param_name) for layer in layout.layers}
    rest = {**params, **{k: v.detach() for k, v in model.named_buffers()}}

    def loss(weights: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = _logits(functional_call(model, (weights, rest), (xi.unsqueeze(0),)))
        return F.cross_entropy(out, yi.unsqueeze(0))

    def one_sample(xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        grads = grad(loss)(conv, xi, yi)
        return torch.cat([grads[layer.param_name].abs().flatten(1).mean(1) for layer in layout.layers])

    batched = vmap(one_sample, chunk_size=chunk)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return batched(x, y)

    return run


def make_train_step(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        F.cross_entropy(_logits(model(x)), y).backward()

    return run


# -- measuring -----------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so that RSS starts low."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory increase over the ``with`` block: CUDA allocator stats, or sampled process RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._max = 0

    def _sample(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            self._max = max(self._max, _rss_bytes() or 0)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_memory()
            base = _rss_bytes()
            if base is not None:
                self._base = self._max = base
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, _rss_bytes() or 0)
            self.peak_bytes = self._max - self._base


class OtherCpu:
    """Share of the machine's CPU time used by other processes while it is active (Linux /proc/stat).

    Accumulates over several ``with`` blocks: busy CPU time of the whole machine minus this
    process's own CPU time, over wall time x CPUs. Timings taken while it is high are unreliable.
    """

    def __init__(self):
        self.other_s = 0.0
        self.capacity_s = 0.0
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _machine_busy_s() -> float | None:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # fields past steal count guests twice

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system

    def __enter__(self) -> "OtherCpu":
        busy = self._machine_busy_s()
        self._start = None if busy is None else (busy, self._own_s(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        busy = self._machine_busy_s()
        if self._start is None or busy is None:
            return
        busy0, own0, t0 = self._start
        self.other_s += max(0.0, (busy - busy0) - (self._own_s() - own0))
        self.capacity_s += (time.perf_counter() - t0) * (os.cpu_count() or 1)

    @property
    def share(self) -> float | None:
        """None over less than MIN_CPU_WINDOW_S of wall time: CPU time comes in 10 ms ticks."""
        cpus = os.cpu_count() or 1
        return self.other_s / self.capacity_s if self.capacity_s >= MIN_CPU_WINDOW_S * cpus else None


@dataclass
class Result:
    method: str
    samples: int
    seconds: list[float] = field(default_factory=list)
    samples_per_s: float | None = None
    peak_mb: float | None = None
    max_rel_err: float | None = None
    median_rel_err: float | None = None  # median over samples of the max over layers
    samples_over_tol: int | None = None
    ratio_vs_loop: float | None = None
    ratio_vs_train_step: float | None = None
    other_cpu: float | None = None  # share of the CPUs used by other processes during the timed runs
    spearman_vs_engine: float | None = None  # engine_rms: mean over samples, batch-standardised profiles
    top10_vs_engine: float | None = None
    note: str = ""
    error: str | None = None
    skipped: str | None = None  # why the method was not run for this case (shown as "-")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error_text(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def measure(
    method: str,
    fn: Callable[[], torch.Tensor | None],
    samples: int,
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    before_each: Callable[[], None] = lambda: None,
) -> tuple[Result, torch.Tensor | None]:
    """Warm-up runs, one untimed run for peak memory, then ``repeats`` timed runs; median time, last output.

    Peak memory is measured apart from the timings: on a CPU it starts from a trimmed heap
    (freed memory handed back to the OS), which the timed runs must not pay for again.
    """
    result = Result(method, samples)
    out = None
    peaks = []
    others = OtherCpu()
    try:
        for _ in range(warmup):
            before_each()
            out = fn()
        before_each()
        out = None
        with PeakMemory(device) as mem:
            out = fn()
        if mem.peak_bytes is not None:
            peaks.append(mem.peak_bytes)
        for _ in range(repeats):
            before_each()
            out = None
            with others:
                _sync(device)
                t0 = time.perf_counter()
                out = fn()
                _sync(device)
                result.seconds.append(time.perf_counter() - t0)
    except Exception as e:  # report, never crash: e.g. vmap unsupported for a model, out of memory
        result.error = _error_text(e)
        out = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return result, None
    result.samples_per_s = samples / statistics.median(result.seconds)
    result.peak_mb = max(peaks) / 2**20 if peaks else None
    result.other_cpu = others.share
    return result, out


def relative_errors(a: torch.Tensor, b: torch.Tensor, layout: UnitLayout) -> torch.Tensor:
    """(layers, samples): max_u |a - b| / max_u |b| over the units of each layer (b is the reference)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    rows = []
    for layer in layout.layers:
        diff = (a[:, layer.offset : layer.stop] - b[:, layer.offset : layer.stop]).abs().amax(1)
        scale = b[:, layer.offset : layer.stop].abs().amax(1)
        rows.append(torch.where(scale > 0, diff / scale.clamp_min(1e-300), torch.where(diff > 0, float("inf"), 0.0)))
    return torch.stack(rows)


def agreement(exact: torch.Tensor, approx: torch.Tensor, k: int = 10) -> tuple[float, float]:
    """Mean over samples of the Spearman correlation and the top-k overlap of two (B, U) profiles,
    each standardised over the batch (a stand-in for the dataset statistics)."""

    def z(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().double().cpu()
        return (t - t.mean(0)) / t.std(0).clamp_min(1e-300) if t.shape[0] > 1 else t

    a, b = z(exact), z(approx)
    ra, rb = a.argsort(1).argsort(1).double(), b.argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    rho = ((ra * rb).sum(1) / ((ra**2).sum(1) * (rb**2).sum(1)).sqrt()).mean()
    k = min(k, a.shape[1])
    ta, tb = a.topk(k, dim=1).indices, b.topk(k, dim=1).indices
    top = torch.tensor([len(set(i.tolist()) & set(j.tolist())) / k for i, j in zip(ta, tb)]).mean()
    return float(rho), float(top)


def _join_note(note: str, more: str) -> str:
    return f"{note}; {more}" if note else more


def disagrees(result: dict, tol: float) -> bool:
    """Engine or vmap differ from the loop: the median over samples of the error is above ``tol``.

    A few samples may exceed ``tol`` without a bug. Random weights put some pre-activations
    within rounding of 0, and the batched and one-sample convolutions round differently, so a
    ReLU can take the other branch for one sample (seen: resnet18 at 64 px, one flip in
    layer1.0.relu, 4e-3 in the layers before it). A bug shows in most samples.
    """
    return result["median_rel_err"] is not None and not result["median_rel_err"] <= tol


def run_case(case: Case, device: torch.device, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model, channels, classes = build_model(case.model, case.size)
    model = model.to(device)
    layout = UnitLayout.from_module(model, "auto")  # conv filters for CNNs, linear units for a ViT or BERT
    n_conv = sum(layer.out_channels * layer.n_params for layer in layout.layers)
    gen = torch.Generator().manual_seed(args.seed + 1)
    if channels is None:  # text: (B, 2, L) token ids over attention masks
        x, y = text_batch(case.model, case.size, case.batch, classes, case.padding, gen)
        x, y = x.to(device), y.to(device)
    else:
        x = torch.randn(case.batch, channels, case.size, case.size, generator=gen).to(device)
        y = torch.randint(0, classes, (case.batch,), generator=gen).to(device)
    n = case.loop_samples
    chunk = vmap_chunk_size(n_conv, case.batch, args.vmap_chunk)
    kw = {"repeats": args.repeats, "warmup": args.warmup}

    results: dict[str, Result] = {}
    outputs: dict[str, torch.Tensor | None] = {}

    def progress(method: str) -> None:
        print(f"  {case.label}: {method} ...", file=sys.stderr, flush=True)

    progress("loop")
    results["loop"], outputs["loop"] = measure("loop", lambda: reference_profiles(model, x[:n], y[:n], layout), n, device, **kw)
    if n < case.batch:
        results["loop"].note = f"first {n} samples"

    progress("engine")
    engine = ProfileEngine(model, layout=layout)
    results["engine"], prof = measure("engine", lambda: engine.profile(x, y).raw, case.batch, device, **kw)
    outputs["engine"] = prof
    if results["engine"].error is None:
        results["engine"].note = f"workspace {engine.workspace_bytes / 2**20:.1f} MB"

    progress("engine_rms")
    engine_rms = ProfileEngine(model, aggregate="rms", layout=layout)
    results["engine_rms"], rms = measure("engine_rms", lambda: engine_rms.profile(x, y).raw, case.batch, device, **kw)
    if rms is not None and prof is not None:
        rho, top = agreement(prof, rms)
        results["engine_rms"].spearman_vs_engine, results["engine_rms"].top10_vs_engine = rho, top
        results["engine_rms"].note = f"vs engine: Spearman {rho:.3f}, top-10 overlap {top:.0%}"

    progress("train_step")
    step = make_train_step(model)
    results["train_step"], _ = measure(
        "train_step", lambda: step(x, y), case.batch, device, before_each=lambda: model.zero_grad(set_to_none=True), **kw
    )
    model.zero_grad(set_to_none=True)

    if is_text(case.model):  # the vmap baseline is for image models (a masked-LM's mask lookup is data-dependent)
        results["vmap"], outputs["vmap"] = Result("vmap", case.batch, skipped="not run for text models"), None
    else:
        progress("vmap")
        try:
            vmapped = make_vmap_profiles(model, layout, chunk)
            results["vmap"], outputs["vmap"] = measure("vmap", lambda: vmapped(x, y), case.batch, device, **kw)
        except Exception as e:
            results["vmap"], outputs["vmap"] = Result("vmap", case.batch, error=_error_text(e)), None
        if results["vmap"].error is None:
            results["vmap"].note = f"chunk_size={chunk}"

    for res in results.values():
        if res.other_cpu is not None and res.other_cpu > BUSY_SHARE:
            res.note = _join_note(res.note, f"other processes used {res.other_cpu:.0%} of the CPUs")
    loop_speed = results["loop"].samples_per_s
    step_speed = results["train_step"].samples_per_s
    for name, res in results.items():
        if name in ("engine", "vmap") and outputs.get(name) is not None and outputs.get("loop") is not None:
            per_sample = relative_errors(outputs[name][:n], outputs["loop"], layout).amax(0)
            res.max_rel_err = float(per_sample.max())
            res.median_rel_err = float(per_sample.median())
            res.samples_over_tol = int((~(per_sample <= args.tol)).sum())
            if res.samples_over_tol:
                res.note = _join_note(res.note, f"{res.samples_over_tol}/{n} samples > {args.tol:g}")
        if res.samples_per_s is not None:
            res.ratio_vs_loop = res.samples_per_s / loop_speed if loop_speed else None
            res.ratio_vs_train_step = res.samples_per_s / step_speed if step_speed else None

    del outputs, engine, engine_rms, model
    _release_free_memory()
    report = {
        "model": case.model,
        "size": case.size,
        "batch": case.batch,
        "loop_samples": n,
        "num_classes": classes,
        "in_channels": channels,
        "device": str(device),
        "n_units": layout.n_units,
        "n_conv_params": n_conv,
        "vmap_chunk_size": chunk,
        "methods": [asdict(results[m]) for m in METHODS],
    }
    if is_text(case.model):  # size is the sequence length; in_channels is None
        report.update(modality="text", task=TEXT_MODELS[case.model][0], padding=case.padding,
                      real_tokens=int(x[:, 1].sum()), vmap_chunk_size=None)
    return report


# -- reporting -------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict:
    cpu, usable = cpu_name(), usable_cores()
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_table(report: dict, tol: float) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['device_name']} | {m['cores']} cores ({m['usable_cores']} usable), torch threads {m['torch_threads']} "
        f"| torch {m['torch']}, torchvision {m['torchvision']} | device {m['device']} | malloc: {m['malloc']}",
        f"repeats {report['settings']['repeats']} (median), warm-up {report['settings']['warmup']}, seed {report['settings']['seed']} "
        f"| other processes used {_fmt(m['other_cpu'], '.0%', '?')} of the CPUs during the run",
    ]
    if m["other_cpu"] is not None and m["other_cpu"] > BUSY_SHARE:
        lines.append("warning: the machine was not idle; timings (rows flagged in the note column) are unreliable")
    header = ("case", "method", "samples/s", "vs loop", "vs train_step", "peak MB", "max rel err", "note")
    rows = []
    for case in report["cases"]:
        label = case_label(case)
        for r in case["methods"]:
            if r.get("skipped"):
                rows.append((label, r["method"], "-", "", "", "", "", f"skipped: {r['skipped']}"))
                continue
            if r["error"] is not None:
                error = r["error"] if len(r["error"]) <= 100 else r["error"][:97] + "..."
                rows.append((label, r["method"], "FAILED", "", "", "", "", error))
                continue
            err = _fmt(r["max_rel_err"], ".1e")
            if r["max_rel_err"] is not None and not r["max_rel_err"] <= tol:
                err += " !!" if disagrees(r, tol) else " !"
            rows.append(
                (
                    label,
                    r["method"],
                    _fmt(r["samples_per_s"], ".1f"),
                    _fmt(r["ratio_vs_loop"], ".2f") + "x",
                    _fmt(r["ratio_vs_train_step"], ".2f") + "x",
                    _fmt(r["peak_mb"], ".0f"),
                    err,
                    r["note"],
                )
            )
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    right = {2, 3, 4, 5, 6}

    def line(row) -> str:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    lines += ["", line(header), line(["-" * w for w in widths])]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            lines.append("")
        lines.append(line(row))
        previous = row[0]
    memory = "peak MB: CUDA max_memory_allocated increase" if m["device"].startswith("cuda") else (
        f"peak MB: process RSS sampled every {RSS_INTERVAL_S * 1000:.0f} ms during one untimed run, minus the RSS at its start"
    )
    projections = []
    for case in report["cases"]:
        engine = next((r for r in case["methods"] if r["method"] == "engine" and r["samples_per_s"]), None)
        if engine is not None and case["size"] >= CPU_LARGE_SIZE and not is_text(case["model"]):
            minutes = IMAGENET_VAL / engine["samples_per_s"] / 60
            projections.append(f"{case['model']}@{case['size']} b{case['batch']}: {minutes:,.1f} min")
    lines += [
        "",
        f"{IMAGENET_VAL:,} images (ImageNet validation) at the engine's speed, profiling alone: " + "; ".join(projections)
    ] if projections else []
    lines += [
        "",
        memory,
        "max rel err: vs loop, max over layers and samples of max|a-b| / max|loop| over the layer's units;",
        f"  '!' marks > {tol:g} for some samples (isolated ReLU sign flips at rounding level are expected),",
        f"  '!!' for most of them (median over samples > {tol:g}: a real disagreement)",
    ]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "cases:\n"
            "  Without --case/--model: resnet18 at 32, 64 and 224 px, resnet50 at 224 px (batch 32)\n"
            "  and small_cnn at 28 px batch 64. On CPU, cases of 224 px or more default to batch\n"
            f"  {CPU_LARGE_BATCH} and a loop timed on {CPU_LARGE_LOOP_SAMPLES} samples, so that the default run stays\n"
            "  under about 10 minutes on a few cores (--batch-size / --loop-samples override).\n"
            "  --model and --size give their cross product (size defaults: small_cnn 28,\n"
            "  inception_v3 299, text models 128, others 224); --case MODEL:SIZE[:BATCH] adds one case.\n"
            "  torchvision models get 1000 classes at >= 224 px, 10 otherwise; small_cnn is\n"
            "  1x28x28 MNIST-shaped with 10 classes. Weights are random (never downloaded).\n"
            "text cases: SIZE is the sequence length (default 128, at most 512), e.g. --case bert_small:128:32.\n"
            "  bert_small is BERT-small (google/bert_uncased_L-4_H-512_A-8), bert_tiny BERT-tiny\n"
            "  (L-2_H-128_A-2), built from their configs with random weights and eager attention:\n"
            "  a 2-class sequence classifier; the _mlm variants are BertForMaskedLM with one [MASK]\n"
            "  per row at a random position and random vocabulary ids as labels. Inputs are random\n"
            f"  token ids in [{TEXT_FIRST_ID}, {BERT_VOCAB}) under a full attention mask (--text-padding half: every\n"
            "  second row has L/2 real tokens). Units: the linear layers (embeddings excluded).\n"
            "  vmap is skipped for text cases (shown as '-').\n"
            "methods:\n"
            "  loop        reference_profiles: one forward + backward per sample\n"
            "  engine      ProfileEngine.profile (what `saliencydb index` runs)\n"
            "  engine_rms  the engine with the approximate rms aggregate; agreement with engine in the note\n"
            "  train_step  one batched forward + backward of the mean loss w.r.t. all parameters\n"
            "  vmap        torch.func vmap(grad(functional_call)) of the conv weights, chunked\n"
            "agreement: per layer and sample, max|a-b| / max|loop| over the layer's units. A few samples\n"
            "  over --tol are expected with random weights: a pre-activation within rounding of 0 can\n"
            "  take another ReLU branch in the batched pass than in the one-sample pass.\n"
            "busy machine: the share of the CPUs used by other processes is measured and printed; rows\n"
            "  timed while it was above 5% are flagged in the note column (rerun those alone).\n"
            "exit status: 1 if engine or vmap exceed --tol for most samples (median over samples),\n"
            "  or loop, engine or train_step fail; a vmap failure is only reported."
        ),
    )
    parser.add_argument("--model", action="append", choices=MODELS, help="model to run (repeatable)")
    parser.add_argument("--size", action="append", type=int, help="input side in px, or sequence length for text models (repeatable; needs --model)")
    parser.add_argument("--case", action="append", metavar="MODEL:SIZE[:BATCH]",
                        help="one case, e.g. resnet18:32:32 or bert_small:128:32 (repeatable)")
    parser.add_argument("--text-padding", choices=PADDINGS, default="none",
                        help="text cases: 'none' (default) every row has L real tokens; 'half': every second row L/2")
    parser.add_argument("--batch-size", type=int, help=f"batch size of cases without one (default {DEFAULT_BATCH}; CPU >= 224 px: {CPU_LARGE_BATCH})")
    parser.add_argument(
        "--loop-samples", type=int, help=f"samples the loop is timed on (default: the batch; CPU >= 224 px: {CPU_LARGE_LOOP_SAMPLES})"
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="default: cuda if available")
    parser.add_argument("--repeats", type=int, help="timed repeats, the median is reported (default 3; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per method (default 1)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--vmap-chunk", type=int, default=0, help=f"vmap chunk_size (default: as many samples as {VMAP_BUDGET_BYTES >> 20} MiB of conv-weight gradients hold)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-3, help="relative error accepted per sample (default 1e-3)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc malloc at its defaults (by default every method runs with the settings the "
                             "saliencydb command line uses: freed memory kept for reuse)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    parser.add_argument("--quick", action="store_true", help="smoke test: small_cnn 28 px batch 8 and resnet18 32 px batch 4, 1 repeat")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = resolve_cases(args, device, parser)
    kept = False if args.default_malloc else keep_freed_memory()

    machine = machine_info(device)
    machine["malloc"] = "freed memory kept (as the CLI)" if kept else "default"
    whole_run = OtherCpu()
    report = {
        "machine": machine,
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "seed": args.seed, "tol": args.tol},
        "cases": [],
    }
    with whole_run:
        for case in cases:
            print(f"{case.label} (loop on {case.loop_samples}) ...", file=sys.stderr, flush=True)
            report["cases"].append(run_case(case, device, args))

    machine["other_cpu"] = whole_run.share
    table = format_table(report, args.tol)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    bad = [r for c in report["cases"] for r in c["methods"] if disagrees(r, args.tol) or (r["error"] and r["method"] != "vmap")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
