"""The public API is small and pinned; importing the package stays light."""
import subprocess
import sys

import prune_fast

PUBLIC = {
    "InvalidInputError", "PruneFastError", "RestrainReport", "RestrainResult", "SpectralTracker",
    "SpectrumReport", "restrain_", "restrain_checkpoint", "restrain_model_", "SequentialEditor",
}


def test_all_is_pinned():
    assert set(prune_fast.__all__) == PUBLIC
    for name in prune_fast.__all__:
        assert getattr(prune_fast, name) is not None


def test_import_does_not_pull_heavy_modules():
    code = ("import sys, prune_fast; heavy = [m for m in ('transformers', 'matplotlib', 'scipy') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import prune_fast imported {out}"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "prune_fast", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("restrain", "example", "demo", "edit", "mend-train"):
        assert cmd in out


def test_example_command_runs_small():
    out = subprocess.run([sys.executable, "-m", "prune_fast", "example", "--edits", "30", "--rows", "96", "--cols", "200"],
                         capture_output=True, text=True, check=True).stdout
    assert "σmax(W)/σ*" in out and "no compounding" in out
    diff = float(out.split("online-restrained weight: ")[1].split()[0])
    assert diff <= 1e-5
