"""`pefttool doctor`: will this machine run my recipe?

One screen: Python; torch (its CPU or CUDA build, the CUDA devices, their memory and bf16); the
versions of the libraries pefttool drives against the ones this release is tested with
(requirements-lock.txt and constraints.txt: a mismatch is named); bitsandbytes' native library
actually quantizing a tensor (QLoRA, 8-bit optimizers); flash-attn; Triton and a C++ compiler
(train.compile); free disk where runs are written and in the Hugging Face cache. With a recipe:
its validation, and `pefttool plan`'s peak against this machine's memory.

Each line is a `Check`: ok, note (optional, absent), warn (runs, but not as tested) or problem
(the recipe cannot run here). Version mismatches break installs more than anything else in
the comparable tools' trackers, so they are named, with the tested version.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import PefttoolError

# The libraries whose versions matter, as pip names them.
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "textual")
OPTIONAL = {"bitsandbytes": "QLoRA and the 8-bit optimizers need it: pip install bitsandbytes"}
GiB = 2**30
LOW_DISK = 10 * GiB


@dataclass
class Check:
    name: str
    status: str      # ok | note | warn | problem
    detail: str


def tested_versions() -> dict[str, str]:
    """The versions this release is tested with: requirements-lock.txt and constraints.txt
    beside the package (a source checkout, as the README installs it); {} elsewhere."""
    root = Path(__file__).resolve().parent.parent
    pins: dict[str, str] = {}
    for name in ("requirements-lock.txt", "constraints.txt"):
        try:
            lines = (root / name).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                dist, version = line.split("==", 1)
                pins[dist.strip().lower()] = version.strip()
    return pins


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _same(installed: str, tested: str) -> bool:
    return installed.split("+", 1)[0] == tested.split("+", 1)[0]   # 2.13.0+cpu is 2.13.0


def library_checks(tested: dict[str, str]) -> list[Check]:
    checks = []
    for dist in LIBRARIES:
        have, want = _installed(dist), tested.get(dist)
        if have is None:
            status = "note" if dist in OPTIONAL else "problem"
            checks.append(Check(dist, status, f"not installed; {OPTIONAL.get(dist, 'pefttool needs it')}"))
        elif want is None:
            checks.append(Check(dist, "ok", f"{have} (no tested version known here)"))
        elif _same(have, want):
            checks.append(Check(dist, "ok", f"{have}, the tested version"))
        else:
            checks.append(Check(dist, "warn", f"{have}, but this release is tested with {want}; if "
                                              f"something breaks: pip install '{dist}=={want}'"))
    return checks


def torch_build() -> tuple[str, str | None]:
    """(torch's version, the CUDA version it was built for or None), from its `torch.version`
    module run on its own: importing torch (a second here) is only needed to see devices."""
    spec = importlib.util.find_spec("torch")
    folder = Path(spec.origin).parent if spec and spec.origin else None
    if folder is None or not (folder / "version.py").is_file():
        raise PefttoolError("torch is not installed: pip install torch (see the README)")
    loaded = importlib.util.spec_from_file_location("_pefttool_torch_version", folder / "version.py")
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module.__version__, module.cuda


def cuda_devices() -> bool:
    """Whether torch sees a CUDA device (imports torch only for a CUDA build)."""
    if torch_build()[1] is None:
        return False
    import torch

    return torch.cuda.is_available()


def torch_checks() -> list[Check]:
    version, cuda = torch_build()
    build = f"CUDA {cuda} build" if cuda else "CPU build (no CUDA)"
    checks = [Check("torch build", "ok", f"torch {version}, {build}")]
    if not cuda_devices():
        why = "no CUDA device is visible" if cuda else "this torch has no CUDA"
        checks.append(Check("devices", "note", f"{why}: training runs on the CPU "
                                               f"({_cpu_summary()})"))
        return checks
    import torch
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        bf16 = torch.cuda.is_bf16_supported()
        checks.append(Check(f"cuda:{i}", "ok", f"{p.name}, {p.total_memory / GiB:.1f} GiB, compute "
                                               f"capability {p.major}.{p.minor}, bf16 "
                                               f"{'yes' if bf16 else 'no (use fp16 mixed precision)'}"))
    return checks


def _cpu_summary() -> str:
    import psutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = psutil.virtual_memory()
    return f"{cores} cores, {memory.available / GiB:.1f} of {memory.total / GiB:.1f} GiB free"


def bitsandbytes_library_check() -> Check | None:
    """bitsandbytes' native library for this torch (CPU, or the CUDA version it was built
    for; BNB_CUDA_VERSION overrides, as bitsandbytes reads it) loading, without importing the
    package (2 s here): `bitsandbytes_check` runs the library itself."""
    if _installed("bitsandbytes") is None:
        return None
    import ctypes

    spec = importlib.util.find_spec("bitsandbytes")
    folder = Path(spec.origin).parent if spec and spec.origin else None
    cuda = torch_build()[1] if cuda_devices() else None
    version = os.environ.get("BNB_CUDA_VERSION") or (cuda or "").replace(".", "")
    name = f"libbitsandbytes_{'cuda' + version if cuda else 'cpu'}.so"
    if folder is None or not (folder / name).is_file():
        return Check("bitsandbytes backend", "problem",
                     f"{name} is not in the installed bitsandbytes; QLoRA and 8-bit optimizers will "
                     f"not run here (pip install --force-reinstall bitsandbytes)")
    try:
        ctypes.CDLL(str(folder / name))
    except OSError as exc:
        return Check("bitsandbytes backend", "problem", f"{name} does not load ({' '.join(str(exc).split())[:120]})")
    return Check("bitsandbytes backend", "ok", f"{name} loads (--recipe also runs an NF4 round trip)")


def bitsandbytes_check() -> Check | None:
    """bitsandbytes' native library quantizing and restoring a tensor (not just importing)."""
    if _installed("bitsandbytes") is None:
        return None
    import torch

    from .quiet import quiet_bitsandbytes_import

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        with quiet_bitsandbytes_import():
            import bitsandbytes.functional as F

        x = torch.randn(64, 64, device=device)
        packed, state = F.quantize_4bit(x, quant_type="nf4")
        error = (F.dequantize_4bit(packed, state) - x).abs().mean().item()
    except Exception as exc:
        return Check("bitsandbytes backend", "problem",
                     f"its native library fails on {device} ({type(exc).__name__}: "
                     f"{' '.join(str(exc).split())[:120]}); QLoRA and 8-bit optimizers will not run")
    if not error < 0.2:
        return Check("bitsandbytes backend", "problem", f"NF4 round trip on {device} is off by {error:.3f} "
                                                        f"on average (expected ~0.1)")
    return Check("bitsandbytes backend", "ok", f"NF4 quantizes on {device} (round-trip error {error:.3f})")


def compile_checks() -> list[Check]:
    checks = []
    flash = _installed("flash-attn") or _installed("flash_attn")
    checks.append(Check("flash-attn", "ok" if flash else "note",
                        flash or "not installed: model.attn_implementation = \"flash_attention_2\" "
                                  "needs it (and a GPU); sdpa needs nothing"))
    triton = _installed("triton")
    compiler = next((found for cc in (os.environ.get("CXX"), "c++", "g++", "clang++")
                     if cc and (found := shutil.which(cc))), None)
    checks.append(Check("train.compile", "ok" if compiler else "note",
                        f"C++ compiler {compiler or 'missing'} (CPU kernels), Triton "
                        f"{triton or 'missing'} (GPU kernels)"))
    return checks


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_checks(runs: Path) -> list[Check]:
    cache = Path(os.environ.get("HF_HOME") or Path("~/.cache/huggingface"))
    checks = []
    for name, where in (("disk (runs)", runs), ("disk (HF cache)", cache)):
        at = _existing(where)
        try:
            free = shutil.disk_usage(at).free
        except OSError as exc:
            checks.append(Check(name, "warn", f"{where}: cannot read its free space ({exc.strerror})"))
            continue
        status = "warn" if free < LOW_DISK else "ok"
        checks.append(Check(name, status, f"{free / GiB:.1f} GiB free at {at}"
                                          + (" (low: a checkpoint of a full fine-tune is ~3x the model)"
                                             if status == "warn" else "")))
    return checks


def recipe_checks(path: Path, overrides: list[str]) -> tuple[list[Check], Path | None]:
    """The recipe's validation, then plan's peak against this machine (no data read); and
    where its runs go (None when even its keys do not read)."""
    import psutil

    from .plan import estimate
    from .recipe import load_recipe
    from .settled import settle

    try:
        recipe = load_recipe(path, overrides)
        run = settle(recipe)
    except PefttoolError as exc:
        problems = [Check("recipe", "problem", line.strip(" -")) for line in str(exc).splitlines()]
        try:   # a missing file still leaves the output folder readable
            return problems, load_recipe(path, overrides, check_files=False).output_dir()
        except PefttoolError:
            return problems, None
    runs = recipe.output_dir()
    checks = [Check("recipe", "ok", f"{path} validates: {recipe.task.type}, strategy "
                                    f"{recipe.method.strategy}, on {run.device}")]
    gib = None
    if not run.on_cpu:
        import torch

        gib = torch.cuda.get_device_properties(0).total_memory / GiB
    try:
        plan = estimate(recipe, device=gib if gib else "cpu")
    except PefttoolError as exc:
        return checks + [Check("plan", "warn", str(exc))], runs
    own = plan.own
    if own.gpu is not None and gib:
        fits = own.gpu.total <= own.gpu.capacity if own.gpu.capacity else True
        checks.append(Check("plan", "ok" if fits else "problem",
                            f"peak ~{own.gpu.total / GiB:.1f} GiB of the GPU's {gib:.1f} GiB"
                            + ("" if fits else ": does not fit (pefttool plan shows the parts)")))
    else:
        free = psutil.virtual_memory().available
        fits = own.cpu.total <= free
        checks.append(Check("plan", "ok" if fits else "problem",
                            f"peak ~{own.cpu.total / GiB:.1f} GiB of RAM, {free / GiB:.1f} GiB free"
                            + ("" if fits else ": does not fit (pefttool plan shows the parts)")))
    return checks, runs


def diagnose(recipe: Path | None = None, overrides: list[str] | None = None) -> list[Check]:
    runs = Path("runs")
    checks = [Check("pefttool", "ok", f"{__version__} on Python {platform.python_version()} "
                                      f"({platform.system()} {platform.machine()})")]
    if sys.version_info < (3, 10):
        checks[0].status = "problem"
    checks += library_checks(tested_versions())
    checks += torch_checks()
    bnb = bitsandbytes_library_check() if recipe is None else bitsandbytes_check()
    if bnb:
        checks.append(bnb)
    checks += compile_checks()
    if recipe is not None:
        found, output = recipe_checks(recipe, overrides or [])
        checks += found
        runs = output or runs
    checks += disk_checks(runs)
    return checks


MARKS = {"ok": "ok", "note": "--", "warn": "!!", "problem": "XX"}


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{MARKS[c.status]:>2}  {c.name:<{width}}  {c.detail}" for c in checks]
    counts = {s: sum(c.status == s for c in checks) for s in ("problem", "warn")}
    verdict = ("ready" if not any(counts.values()) else
               f"{counts['problem']} problem(s), {counts['warn']} warning(s)")
    return "\n".join(lines + [f"doctor: {verdict}"])


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
