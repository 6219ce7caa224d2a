#!/usr/bin/env bash
# Set up pefttool on the GPU machine (no registry, no network) and, given a command, run it.
#
#     bash benchmarks/gpu_setup.sh                                   # set up + smoke only
#     bash benchmarks/gpu_setup.sh python3 benchmarks/gpu_check.py   # then run this, set up
#
# From the repository root, with .whl/ carried (scripts/gpu_wheels.sh fills it here):
#   1. installs .whl/*.whl into $SITE (default /tmp/site) without dependencies;
#   2. installs pefttool itself there without dependencies (this registers its entry points,
#      through which the built-in strategies load); if that build fails (no setuptools >= 68
#      there), writes the distribution's metadata and entry points by hand instead, the code
#      being read from the working tree through PYTHONPATH;
#   3. exports PYTHONPATH=$SITE:$PWD:$PWD/plugins and offline settings for the hubs;
#   4. a smoke check: imports pefttool, its strategies, datasets, pydantic, tomli_w (exit 1 if
#      one fails), bitsandbytes (a failure there is a warning: the QLoRA rows will say so);
#      prints the versions and nvidia-smi's GPU name and memory;
#   5. exec's the command given as arguments, if any (its exit status is this script's).
# Environment: PYTHON (default python3), SITE (default /tmp/site), GPU_SETUP_SMOKE=0 skips 4.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
say() { echo "gpu_setup: $*"; }
t0=$(date +%s)

shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  say "no wheels in .whl/ (run scripts/gpu_wheels.sh here and carry .whl)"; exit 1
fi
mkdir -p "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --disable-pip-version-check --root-user-action=ignore --target "$SITE" "${wheels[@]}" \
  || { say "installing .whl/*.whl into $SITE failed"; exit 1; }
say "installed ${#wheels[@]} wheels into $SITE"

if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade \
     --disable-pip-version-check --root-user-action=ignore --target "$SITE" . ; then
  say "installed pefttool into $SITE"
else
  # The same metadata pip would write: enough for importlib.metadata's entry points.
  say "pip could not build pefttool here: writing its metadata and entry points by hand"
  "$PY" - "$SITE" <<'EOF' || { say "writing pefttool's metadata failed"; exit 1; }
import sys, tomllib
from pathlib import Path
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
info = Path(sys.argv[1]) / f"{project['name']}-{project['version']}.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
(info / "entry_points.txt").write_text("".join(
    f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items()))
(info / "INSTALLER").write_text("gpu_setup.sh\n")
(info / "RECORD").write_text("")
EOF
fi

# $SITE first: the carried wheels shadow older copies there (typing_extensions, fsspec).
export PYTHONPATH="$SITE:$ROOT:$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export HF_HOME=${HF_HOME:-/tmp/hf-home}

if [ "${GPU_SETUP_SMOKE:-1}" != 0 ]; then
  "$PY" - <<'EOF' || { say "smoke check failed"; exit 1; }
import importlib, importlib.metadata as md, sys
print(f"gpu_setup: python {sys.version.split()[0]} at {sys.executable}")
required = ["pefttool", "pefttool_full", "pefttool_lora", "pefttool_qlora", "datasets", "pydantic",
            "tomli_w", "pluggy", "torch", "transformers", "peft", "accelerate"]
failed = []
for name in required:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name} ({type(exc).__name__}: {exc})")
try:
    import bitsandbytes as bnb
    from bitsandbytes import cextension
    lib = type(cextension.lib).__name__
    print(f"gpu_setup: bitsandbytes {bnb.__version__}, native library {lib}")
    if lib != "CudaBNBNativeLibrary":
        print("gpu_setup: WARNING: bitsandbytes loaded no CUDA library: the QLoRA rows will fail")
except Exception as exc:
    print(f"gpu_setup: WARNING: bitsandbytes does not import ({type(exc).__name__}: {exc}): "
          "the QLoRA rows will fail")
versions = []
for dist in ("torch", "transformers", "peft", "accelerate", "datasets", "pydantic", "pydantic-core",
             "typing-extensions", "fsspec", "pyarrow", "huggingface-hub", "tokenizers", "safetensors",
             "pluggy", "setuptools", "triton"):
    try:
        versions.append(f"{dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        versions.append(f"{dist} -")
print("gpu_setup: " + ", ".join(versions))
eps = sorted(ep.name for ep in md.entry_points(group="pefttool"))
print(f"gpu_setup: pefttool strategies (entry points): {', '.join(eps) or 'none'}")
if not {"full", "lora", "qlora"} <= set(eps):
    failed.append("pefttool's entry points (full, lora, qlora) are not registered")
import torch
print(f"gpu_setup: torch.cuda.is_available() = {torch.cuda.is_available()}, "
      f"devices: {torch.cuda.device_count()}, CUDA {torch.version.cuda}")
if failed:
    print("gpu_setup: FAILED: " + "; ".join(failed))
    sys.exit(1)
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    || say "nvidia-smi is not on PATH"
fi
say "ready in $(( $(date +%s) - t0 )) s; PYTHONPATH=$PYTHONPATH"

if [ $# -gt 0 ]; then
  exec "$@"
fi
