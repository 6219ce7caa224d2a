"""`pefttool doctor`: one screen on whether this machine runs a recipe (issue 27.4)."""

from __future__ import annotations

import json

from pefttool import doctor
from pefttool.cli import main
from tiny_models import write_tiny_recipe


def _cli(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_doctor_names_torch_the_libraries_bitsandbytes_and_the_disk(capsys):
    rc, out, err = _cli(capsys, "doctor")
    assert rc == 0 and err == ""
    for name in ("pefttool", "torch build", "transformers", "peft", "accelerate", "datasets",
                 "textual", "train.compile", "disk (runs)", "disk (HF cache)"):
        assert any(line[4:].startswith(name) for line in out.splitlines()), name
    assert "CPU build" in out or "CUDA" in out
    assert "libbitsandbytes_cpu.so loads" in out or "libbitsandbytes_cuda" in out
    assert out.splitlines()[-1].startswith("doctor: ")


def test_the_tested_versions_are_the_lock_files_and_a_mismatch_is_named(monkeypatch):
    tested = doctor.tested_versions()
    assert tested["torch"] == "2.13.0" and tested["transformers"]   # constraints + lock file
    checks = {c.name: c for c in doctor.library_checks({**tested, "peft": "0.0.1"})}
    assert checks["peft"].status == "warn"
    assert "tested with 0.0.1" in checks["peft"].detail and "pip install 'peft==0.0.1'" in checks["peft"].detail
    assert checks["transformers"].status == "ok" and "the tested version" in checks["transformers"].detail
    monkeypatch.setattr(doctor, "_installed", lambda dist: None)
    missing = {c.name: c for c in doctor.library_checks(tested)}
    assert missing["bitsandbytes"].status == "note" and missing["torch"].status == "problem"


def test_with_a_recipe_it_validates_and_checks_the_plan_against_this_machine(capsys, tmp_path, tiny_causal_dir):
    good = write_tiny_recipe(tmp_path, tiny_causal_dir, "lora", task="causal-lm", name="good")
    rc, out, _ = _cli(capsys, "doctor", "--recipe", good, "--json")
    checks = {c["name"]: c for c in json.loads(out)}
    assert rc == 0 and checks["recipe"]["status"] == "ok" and "validates" in checks["recipe"]["detail"]
    assert checks["plan"]["status"] == "ok" and "GiB" in checks["plan"]["detail"]
    assert checks["bitsandbytes backend"]["detail"].startswith("NF4 quantizes on")   # the library ran
    rc, out, err = _cli(capsys, "doctor", "--recipe", good, "--set", "train.lr=-1")
    assert rc == 1 and err == ""
    problem = [line for line in out.splitlines() if line.startswith("XX")]
    assert len(problem) == 1 and "train.lr" in problem[0]
    rc, _, err = _cli(capsys, "doctor", "--set", "train.lr=1")
    assert rc == 2 and err.strip() == "error: --set: give --recipe RECIPE for the values to override"
