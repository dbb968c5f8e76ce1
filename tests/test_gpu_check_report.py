"""What scripts/gpu_check.sh prints: the PERF lines of the step benchmark (benchmarks/search_step.py,
at its tiny setting on the CPU), the SUMMARY block (benchmarks/report.py) that repeats them in
under 3 KB, and the script's clean stop where no GPU is visible."""
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import kernel_passes, kernels, report, search_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_steps(capsys, *argv):
    assert search_step.main(["--device", "cpu", "--tiny", "--budget", "0", *argv]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PERF")]
    parsed = report.parse(lines)
    assert len(parsed) == len(lines), [line for line in lines if not report.PERF_LINE.match(line)]
    return lines, {f"{s}.{v}.{m}": (value, rest) for s, v, m, value, rest in parsed}


def shown(block, subject, variant, metric, value):
    """Whether the SUMMARY line of ``subject`` gives ``value`` for the variant and metric, in
    either form: ``subject: metric variant=value ... | ...`` or ``subject [metric ...]: variant value ...; ...``."""
    (line,) = [line for line in block if line.split(" ")[0].rstrip(":") == subject]
    value = "FAILED(OutOfMemoryError)" if value == "FAILED" else value
    head, body = line.split(": ", 1)
    if head.endswith("]"):
        metrics = head[head.index("[") + 1:-1].split(" ")
        rows = dict((cells[0], cells[1:]) for cells in (row.split(" ") for row in body.split("; ")))
        return rows[variant][metrics.index(metric)] == value
    groups = dict(group.split(" ", 1) for group in body.split(" | "))
    return f"{variant}={value}" in groups[metric].split(" ")


def test_search_hours_counts_the_loops_steps_and_evaluations():
    # DARTS: 25,000 // 64 = 390 steps (the last partial batch dropped), 391 evaluation batches, 50 epochs.
    assert search_step.search_hours("darts", 1.0, 0.0, 0.0) == pytest.approx(50 * 390 / 3600)
    assert search_step.search_hours("darts", 0.0, 1.0, 0.0) == 0  # the architecture is updated in every epoch
    assert search_step.search_hours("darts", 0.0, 0.0, 1.0) == pytest.approx(50 * 391 / 3600)
    # Auto-DeepLab: 1,487 // 2 = 743 steps, 20 weight-only epochs then 20 full, 744 evaluation batches a epoch.
    assert search_step.search_hours("autodeeplab", 1.0, 0.0, 0.0) == pytest.approx(20 * 743 / 3600)
    assert search_step.search_hours("autodeeplab", 0.0, 1.0, 0.0) == pytest.approx(20 * 743 / 3600)
    assert search_step.search_hours("autodeeplab", 0.0, 0.0, 1.0) == pytest.approx(40 * 744 / 3600)


def test_darts_second_order_perf_lines_and_summary(capsys, one_thread):
    lines, figures = run_steps(capsys, "--space", "darts", "--order", "2")
    for variant in ("fused", "ref"):
        for metric in ("ms", "saved_MiB", "eval_ms", "search_h"):
            value, rest = figures[f"darts2.{variant}.{metric}"]
            assert float(value) > 0 and rest.startswith("unit="), (variant, metric, value, rest)
    assert float(figures["darts2.fused.x"][0]) > 0
    ms, eval_ms = (float(figures[f"darts2.fused.{m}"][0]) / 1e3 for m in ("ms", "eval_ms"))
    assert float(figures["darts2.fused.search_h"][0]) == pytest.approx(
        search_step.search_hours("darts", ms, ms, eval_ms), rel=2e-3)

    block = report.summary(["steps-darts2: ok, 3s"], lines)
    assert block[0].startswith("=== SUMMARY") and block[-1] == "=== END SUMMARY"
    assert block[1] == "steps-darts2: ok, 3s"
    for name, (value, _) in figures.items():
        assert shown(block, *name.split("."), value), name
    assert len("\n".join(block).encode()) < report.SUMMARY_LIMIT


def test_autodeeplab_weight_only_step_enters_the_extrapolation(capsys, one_thread):
    _, figures = run_steps(capsys, "--space", "autodeeplab", "--variant", "fused eager")
    ms, weight_ms, eval_ms = (float(figures[f"adl1.fused.{m}"][0]) / 1e3 for m in ("ms", "weight_ms", "eval_ms"))
    assert float(figures["adl1.fused.search_h"][0]) == pytest.approx(
        search_step.search_hours("autodeeplab", ms, weight_ms, eval_ms), rel=2e-3)


def test_a_failing_variant_prints_failed_and_the_next_runs(capsys, monkeypatch, one_thread):
    make_step = search_step.make_step

    def out_of_memory(space, variant, *args, **kwargs):
        if variant.startswith("reference"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return make_step(space, variant, *args, **kwargs)

    monkeypatch.setattr(search_step, "make_step", out_of_memory)
    lines, figures = run_steps(capsys, "--variant", "reference eager", "--variant", "fused eager")
    assert figures["darts1.ref.ms"] == ("FAILED", "reason=OutOfMemoryError: CUDA out of memory. Tried to allocate "
                                                  "20.00 GiB")
    assert float(figures["darts1.fused.ms"][0]) > 0
    assert shown(report.summary([], lines), "darts1", "ref", "ms", "FAILED")


def realistic_run():
    """The phase lines and PERF lines of a whole GPU run, names as long as the real ones."""
    lines = ["PERF copy.cuda.GBps=3012 unit=GB/s"]
    variants = ["fused", "fused_graphs", "ref", "ref_graphs"]
    for subject in ("darts1", "darts2", "adl1"):
        for variant in variants:
            metrics = ["ms", "MiB"] + (["weight_ms"] if subject == "adl1" else [])
            metrics += (["eval_ms"] if "graphs" not in variant else []) + ["search_h"]
            lines += [f"PERF {subject}.{variant}.{m}=123.4 unit=ms" for m in metrics]
        lines += [f"PERF {subject}.{v}.x=12.34 unit=x" for v in variants if v != "ref"]
    failed = lines.index("PERF adl1.ref_graphs.ms=123.4 unit=ms")
    lines[failed] = "PERF adl1.ref_graphs.ms=FAILED reason=OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    lines += [f"PERF darts1.{v}_compile.{m}=123.4 unit=ms" for v in ("fused", "ref") for m in ("ms", "MiB", "warmup_s")]
    lines += ["PERF darts1.ref_compile.x=1.234 unit=x", "PERF darts1.fused_compile.x=12.34 unit=x"]
    lines += ["PERF profile_darts.busy.ms=12.34 unit=ms/step"]
    lines += [f"PERF profile_darts.{i}_{'implicit_convolve_sgemm_kernel_with_a_long_name'[:40]}.ms=1.234 unit=ms/step"
              for i in range(1, 7)]
    cases = ([("mixed_sum", f"K{k} {'x'.join(map(str, s))}") for k, s in kernels.MIXED_SUM_CASES]
             + [("trellis_aggregate", f"T{t} B{b} {'x'.join(map(str, s))}") for t, b, s in kernels.TRELLIS_CASES]
             + [("resize_sum", f"{n}x{c}x{sides}->{size}") for (n, c), sides, size in kernels.RESIZE_SUM_CASES]
             + [("depthwise_conv2d", f"{name} {'x'.join(map(str, shape))}")
                for name, shape, *_ in kernels.DEPTHWISE_CASES])
    for op, case in cases:
        lines += [f"PERF {op}.{report.token(case)}.{m}=0.1234 unit=ms" for m in ("ref_ms", "fused_ms", "frac")]
    lines += ["PERF fp32_matmul.cuda.GMACps=12345 unit=G multiply-adds/s"]
    lines += [f"PERF dw_passes.cuda.{p}_{m}=1.234 unit=x torch" for p in kernel_passes.PASSES
              for m in ("min", "geomean")]
    phases = ["library: prebuilt", "  NVIDIA H100 80GB HBM3, 570.124.06, 81559 MiB",
              "  python 3.12.3 torch 2.11.0+cu130 cuda 13.0 cudnn 91300 gpu True", "versions: ok, 3s",
              "steps-darts1: ok, 41s", "steps-darts2: ok, 55s", "steps-adl1: TIMED OUT at 110s, 120s",
              "profile: ok, 20s", "bench-kernels: ok, 14s", "bench-passes: ok, 25s",
              "kernel-tests: ok, 41s; 238 passed 0 failed 12 skipped",
              "graph-tests: FAILED (exit 1), 79s; 17 passed 3 failed; first failed: " + ",".join(
                  ["test_graph_replay_equals_eager_with_a_longer_name[autodeeplab-second-order]"[:70]] * 2),
              "other-cuda-tests: ok, 20s; 11 passed 0 failed 40 skipped",
              "compile: TIMED OUT at 45s, 55s", "sanitizer-probe: ok, 9s",
              "memcheck: TIMED OUT at 50s, 60s; 80 passed 0 failed; sanitizer reports: 0",
              "racecheck: NOT RUN (budget spent)"]
    return phases, lines


def test_summary_of_a_whole_run_stays_under_3_kb():
    phases, lines = realistic_run()
    assert len(lines) > 100
    block = report.summary(phases, lines)
    text = "\n".join(block)
    assert len(text.encode()) < 3000, len(text.encode())
    assert "cut" not in text
    for subject, variant, metric, value, _ in report.parse(lines):
        assert shown(block, subject, variant, metric, value), (subject, variant, metric)
    for phase in phases:
        assert phase in text


def test_summary_cuts_what_would_pass_the_limit():
    phases, lines = realistic_run()
    block = report.summary(phases * 5, lines * 5)
    assert len("\n".join(block).encode()) < report.SUMMARY_LIMIT
    assert "more lines cut" in block[-2] and block[-1] == "=== END SUMMARY"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the whole check")
def test_gpu_check_stops_cleanly_without_a_gpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("ONLY", None)
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    out = done.stdout
    assert "stopping before the GPU phases" in out
    summary = out[out.index("=== SUMMARY"):]
    assert summary.rstrip().endswith("=== END SUMMARY")
    assert "versions: ok" in summary and "stopped before the GPU phases" in summary
    assert sorted(os.listdir(tmp_path)) == ["logs.tar", "summary.txt"]


def test_kernel_pass_rows_compare_equal_computations(capsys, one_thread):
    """Each pass's two sides compute the same tensors (else the speedup means nothing), and a quick
    CPU run gives a row per case and pass and the PERF lines."""
    stride, N, C, H = kernel_passes.CPU_SIZES[1]
    x = torch.randn(2, C, H, H, dtype=torch.float64)
    weights = [torch.randn(C, 1, k, k, dtype=torch.float64) for _, k, _, _ in kernel_passes.GEOMETRIES]
    grads = [torch.randn_like(torch.nn.functional.conv2d(x, w, None, stride, p, d, C))
             for w, (_, _, p, d) in zip(weights, kernel_passes.GEOMETRIES)]
    sides = [kernel_passes.depthwise_sides(x, w, g, stride, p, d)
             for w, g, (_, _, p, d) in zip(weights, grads, kernel_passes.GEOMETRIES)]
    sides.append(kernel_passes.segments_sides(x, weights, grads, stride))
    for case in sides:
        for name in kernel_passes.PASSES:
            theirs, ours = (side() for side in case[name])
            if name == "igrad":
                theirs = theirs[0] if isinstance(theirs, tuple) else theirs
            elif name == "wgrad":
                theirs = torch.cat([t.flatten() for t in theirs]) if isinstance(theirs, list) else theirs[1]
                ours = ours.flatten()
                theirs = theirs.flatten()
            assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-10), name
    rows = kernel_passes.run("cpu", quick=True, min_run_time=0.001)
    assert len(rows) == 3 * (len(kernel_passes.GEOMETRIES) + 1)
    out = capsys.readouterr().out
    for p in kernel_passes.PASSES:
        assert f"PERF dw_passes.cpu.{p}_min=" in out and f"PERF dw_passes.cpu.{p}_geomean=" in out
