"""The repository's ``kernels/`` folder is ``more3s.kernels``; it must not take the top-level name ``kernels``, which
belongs to Hugging Face's distribution (a dependency of transformers >= 5.x, imported by its activations module).
Run from the repository root, where ``python -m`` and pytest put the folder on sys.path."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, *flags: str, env_path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if env_path is not None:
        env["PYTHONPATH"] = env_path
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_top_level_kernels_is_the_installed_distribution_not_the_repo_folder(tmp_path: Path) -> None:
    other = tmp_path / "kernels"
    other.mkdir()
    (other / "__init__.py").write_text("ORIGIN = 'installed elsewhere'\n")
    done = _python("import kernels, more3s.kernels.more_attention as k; print(kernels.ORIGIN); print(k.__name__)",
                   env_path=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["installed elsewhere", "more3s.kernels.more_attention"]


def test_top_level_kernels_without_a_distribution_is_a_clear_import_error() -> None:
    done = _python("import kernels", "-S")  # -S: no site-packages, so no other `kernels` exists
    assert done.returncode != 0
    assert "No module named 'kernels'" in done.stderr and "more3s.kernels" in done.stderr


def test_transformers_lxmert_imports_from_the_repo_root() -> None:
    done = _python("from transformers import LxmertModel; print(LxmertModel.__name__)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "LxmertModel"
