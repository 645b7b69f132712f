"""Turn the raw outputs of a GPU check (scripts/gpu_check.sh) into one readable page, GPU_RESULTS.md.

Why a separate script: the GPU machine is lent for minutes and only its $OUT folder comes back, as
raw pytest-benchmark JSON, a JUnit XML and nvidia-smi CSV. This page is what a reader (and the
README) needs from them: which GPU and software, whether each phase and each GPU test passed, each
benchmark's median time, and the ratios against a baseline that the benchmarks store in
``extra_info`` (``speedup_vs_sdpa``, ``speedup_vs_reference``, ...). It runs on any python >= 3.10
with the standard library alone, so it still reports when the project failed to install.

    python scripts/summarize_gpu_results.py --bench OUT/bench.json [--bench more.json] \
        [--junit OUT/tests_gpu.xml] [--nvidia-smi OUT/nvidia_smi.csv] [--env OUT/env.json] \
        [--phases OUT/phases.tsv] [--commit SHA] --out results/GPU_RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SummaryInputs", "BenchRow", "TestSummary", "load_bench", "load_junit", "load_nvidia_smi", "load_env",
    "load_phases", "is_ratio_key", "format_seconds", "render", "main",
]

# extra_info keys that hold a ratio against a baseline timed in the same run (the bench/ habit).
RATIO_KEY = re.compile(r"speedup|ratio|_vs_|faster|slowdown", re.IGNORECASE)
# Integer extra_info that is still a measurement (e.g. steps_per_s=round(...)), not a setting.
INT_MEASUREMENT = re.compile(r"per_s|_ps$|flops|_s$|_ms$|_us$", re.IGNORECASE)


@dataclass
class SummaryInputs:
    bench: list[Path] = field(default_factory=list)  # pytest-benchmark --benchmark-json files
    junit: list[Path] = field(default_factory=list)  # pytest --junitxml files
    nvidia_smi: Path | None = None  # nvidia-smi --query-gpu=... --format=csv
    env: Path | None = None  # JSON written by gpu_check.sh (python, torch, CUDA, triton versions)
    phases: Path | None = None  # TSV: name, rc ("skipped" or an int), seconds, limit seconds
    commit: str | None = None


@dataclass
class BenchRow:
    group: str
    name: str
    median_s: float
    iqr_s: float
    rounds: int
    ratios: dict[str, float]
    metrics: dict[str, float]
    device: str | None


@dataclass
class TestSummary:
    counts: Counter  # passed / failed / error / skipped
    failures: list[tuple[str, str]]  # (test id, first line of the message)
    skip_reasons: Counter


# ---------------------------------------------------------------------------------------------
# Loading (each raises ValueError naming the file and what is wrong)
# ---------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def is_ratio_key(key: str) -> bool:
    return bool(RATIO_KEY.search(key))


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def load_bench(path: Path) -> tuple[list[BenchRow], dict]:
    """(rows, machine_info) of a pytest-benchmark JSON file."""
    data = _read_json(path)
    if "benchmarks" not in data or not isinstance(data["benchmarks"], list):
        raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    rows = []
    for i, b in enumerate(data["benchmarks"]):
        try:
            stats, name = b["stats"], b["name"]
            median, iqr, rounds = float(stats["median"]), float(stats.get("iqr", 0.0)), int(stats["rounds"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: benchmark #{i} lacks name/stats.median/stats.rounds ({e!r})") from None
        extra = b.get("extra_info") or {}
        params = b.get("params") or {}
        ratios, metrics = {}, {}
        for k, v in extra.items():
            x = _number(v)
            if x is None or k in params:
                continue
            if is_ratio_key(k):
                ratios[k] = x
            elif isinstance(v, float) or INT_MEASUREMENT.search(k):  # other ints are settings (B, H, capacity)
                metrics[k] = x
        fullname = b.get("fullname", name)
        group = b.get("group") or fullname.split("[")[0].rsplit("::", 1)[0]
        device = extra.get("device") if isinstance(extra.get("device"), str) else None
        rows.append(BenchRow(group, name, median, iqr, rounds, ratios, metrics, device))
    return rows, data.get("machine_info") or {}


def load_junit(path: Path) -> TestSummary:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid JUnit XML ({e})") from None
    counts, skips, failures = Counter(), Counter(), []
    for case in root.iter("testcase"):
        tid = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                msg = (child.get("message") or child.text or "").strip().splitlines()
                failures.append((tid, msg[0][:160] if msg else ""))
            elif child.tag == "skipped":
                outcome = "skipped"
                skips[(child.get("message") or "").strip()[:120]] += 1
        counts[outcome] += 1
    return TestSummary(counts, failures, skips)


def load_nvidia_smi(path: Path) -> list[dict[str, str]]:
    """Rows of ``nvidia-smi --query-gpu=... --format=csv``, keyed by the header without units."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    rows = list(csv.reader(path.read_text().splitlines(), skipinitialspace=True))
    if len(rows) < 2 or "name" not in [h.split(" [")[0] for h in rows[0]]:
        raise ValueError(f"{path}: expected nvidia-smi CSV with a 'name' column and one row per GPU")
    header = [h.split(" [")[0].strip() for h in rows[0]]
    return [dict(zip(header, (c.strip() for c in r))) for r in rows[1:] if r]


def load_env(path: Path) -> dict:
    return _read_json(path)


def load_phases(path: Path) -> list[tuple[str, str, int, int]]:
    """(name, status, seconds, limit) per line of gpu_check.sh's phases.tsv."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise ValueError(f"{path}:{n}: expected 4 tab-separated fields (name, rc, seconds, limit), "
                             f"got {line[:80]!r}")
        name, rc, secs, lim = parts
        try:
            secs_i, lim_i = int(secs), int(lim)
        except ValueError:
            raise ValueError(f"{path}:{n}: seconds and limit must be integers, got {secs!r}, {lim!r}") from None
        if rc == "skipped":
            status = "skipped (no time left)"
        elif rc == "0":
            status = "ok"
        elif rc == "124":
            status = f"TIMED OUT at {lim_i} s"
        else:
            status = f"FAILED (rc {rc})"
        out.append((name, status, secs_i, lim_i))
    return out


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def format_seconds(s: float) -> str:
    """Median times in the unit that keeps 3-4 significant digits readable."""
    if s < 1e-6:
        return f"{s * 1e9:.1f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1.0:
        return f"{s * 1e3:.3f} ms"
    return f"{s:.3f} s"


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:,.0f}"


def _kv(d: dict[str, float], suffix: str = "") -> str:
    return ", ".join(f"{k} {_num(v)}{suffix}" for k, v in d.items()) or "–"


def render(inputs: SummaryInputs) -> str:
    lines = ["# more3s GPU results", ""]
    lines.append(f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
                 "`scripts/summarize_gpu_results.py` from the outputs of `scripts/gpu_check.sh`"
                 + (f", commit `{inputs.commit}`." if inputs.commit else "."))
    lines.append("")

    benches = [(p, *load_bench(p)) for p in inputs.bench]
    env = load_env(inputs.env) if inputs.env else {}
    gpus = load_nvidia_smi(inputs.nvidia_smi) if inputs.nvidia_smi else []

    # -- machine --
    lines += ["## Machine", "", "| | |", "|---|---|"]
    if gpus:
        for i, g in enumerate(gpus):
            desc = ", ".join(f"{k} {g[k]}" for k in ("memory.total", "driver_version", "compute_cap",
                                                     "clocks.max.sm", "clocks.max.mem", "power.limit") if g.get(k))
            lines.append(f"| GPU {i} | **{g['name']}** ({desc}) |")
    else:
        seen = sorted({r.device for _, rows, _ in benches for r in rows if r.device and r.device != "cpu"})
        gpu = env.get("gpu") or (", ".join(seen) if seen else None)
        lines.append(f"| GPU | {gpu or 'unknown (no nvidia-smi output)'} |")
    if env:
        if env.get("gpu"):
            lines.append(f"| torch sees | {env['gpu']} (sm {env.get('capability', '?')}, {env.get('sms', '?')} SMs, "
                         f"{env.get('memory_gib', '?')} GiB) |")
        sw = [f"python {env.get('python', '?')}", f"torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')})"]
        sw += [f"{m} {env[m]}" for m in ("triton", "transformers", "numpy", "pytest_benchmark") if m in env]
        lines.append(f"| software | {', '.join(sw)} |")
        if "torch_error" in env:
            lines.append(f"| torch error | `{env['torch_error']}` |")
    for p, _, mi in benches[:1]:
        cpu = (mi.get("cpu") or {}).get("brand_raw")
        if cpu:
            lines.append(f"| CPU | {cpu}, {(mi.get('cpu') or {}).get('count', '?')} cores |")
    lines.append("")

    # -- phases --
    if inputs.phases:
        lines += ["## Phases", "", "| phase | status | seconds | limit s |", "|---|---|---:|---:|"]
        lines += [f"| {n} | {s} | {sec} | {lim} |" for n, s, sec, lim in load_phases(inputs.phases)]
        lines.append("")

    # -- tests --
    for path in inputs.junit:
        t = load_junit(path)
        c = t.counts
        lines += [f"## Tests ({path.name})", "",
                  f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped.", ""]
        if t.failures:
            lines += ["| failed test | message |", "|---|---|"]
            lines += [f"| `{tid}` | {msg.replace('|', '/')} |" for tid, msg in t.failures]
            lines.append("")
        if t.skip_reasons:
            top = t.skip_reasons.most_common(6)
            lines.append("Skip reasons: " + "; ".join(f"{n}× {r or '(none)'}" for r, n in top) + ".")
            lines.append("")

    # -- benchmarks --
    if not inputs.bench:
        lines += ["## Benchmarks", "", "No benchmark JSON was produced: no benchmark ran, or the phase failed "
                  "before pytest could write it (see Phases).", ""]
    for path, rows, _ in benches:
        lines += [f"## Benchmarks ({path.name})", ""]
        if not rows:
            lines += ["No benchmark ran (all skipped?).", ""]
            continue
        lines += ["Median over pytest-benchmark's rounds (IQR beside it); ratios are the `extra_info` entries "
                  "against a baseline timed in the same test (> 1 = faster than the baseline).", ""]
        by_group: dict[str, list[BenchRow]] = {}
        for r in rows:
            by_group.setdefault(r.group, []).append(r)
        for group, grows in by_group.items():
            lines += [f"### {group}", "", "| benchmark | median | IQR | rounds | ratios | metrics |",
                      "|---|---:|---:|---:|---|---|"]
            for r in grows:
                iqr = format_seconds(r.iqr_s) if r.rounds > 1 else "–"
                lines.append(f"| `{r.name}` | {format_seconds(r.median_s)} | {iqr} | {r.rounds} "
                             f"| {_kv(r.ratios, '×')} | {_kv(r.metrics)} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _atomic_write_text(path: Path, text: str) -> None:
    # Same contract as more3s.atomic.atomic_write_text, inlined so that this script runs with the
    # standard library alone (it must report even when the package failed to install).
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, action="append", default=[], help="pytest-benchmark JSON (repeatable)")
    ap.add_argument("--junit", type=Path, action="append", default=[], help="pytest JUnit XML (repeatable)")
    ap.add_argument("--nvidia-smi", type=Path, help="nvidia-smi --query-gpu=name,... --format=csv output")
    ap.add_argument("--env", type=Path, help="env.json written by gpu_check.sh")
    ap.add_argument("--phases", type=Path, help="phases.tsv written by gpu_check.sh")
    ap.add_argument("--commit", help="commit the run tested")
    ap.add_argument("--out", type=Path, default=Path("results/GPU_RESULTS.md"))
    a = ap.parse_args(argv)
    inputs = SummaryInputs(bench=a.bench, junit=a.junit, nvidia_smi=a.nvidia_smi, env=a.env, phases=a.phases,
                           commit=a.commit)
    try:
        text = render(inputs)
    except ValueError as e:
        print(f"summarize_gpu_results: error: {e}", file=sys.stderr)
        return 2
    _atomic_write_text(a.out, text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
