"""PERF lines and the SUMMARY block of scripts/gpu_check.sh.

Every figure a benchmark measures is printed at once as one flushed line

    PERF <subject>.<variant>.<metric>=<value> unit=<unit>
    PERF <subject>.<variant>.<metric>=FAILED reason=<why>

(the subject and variant hold no dots or spaces; the metric is usually the unit: ms, MiB, h, x).
At the end ``python -m benchmarks.report PHASES PERF`` prints the SUMMARY block: the compact phase
lines (status, seconds, test counts) and every PERF figure, one line per subject, in at most
``SUMMARY_LIMIT`` bytes, so that the last lines of a console carry every result. A subject's line
is the shorter of

    darts1: ms fused=52.13 ref=412.3 | x fused=7.909
    darts1 [ms x]: fused 52.13 7.909; ref 412.3 -          (a table: '-' where a variant lacks a metric)

and a FAILED figure shows as FAILED(<exception type>).
"""
import re
import sys

SUMMARY_LIMIT = 3000  # bytes of the whole block, BEGIN and END lines included
_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")
PERF_LINE = re.compile(r"^PERF (\w+)\.(\w+)\.(\w+)=(\S+)(?: (.*))?$")


def token(text):
    """``text`` as one name field of a PERF line: runs of other characters become one '_'."""
    return _UNSAFE.sub("_", str(text)).strip("_") or "_"


def fmt(value):
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.4g}"


def perf(subject, variant, metric, value, unit):
    print(f"PERF {token(subject)}.{token(variant)}.{token(metric)}={fmt(value)} unit={unit}", flush=True)


def perf_failed(subject, variant, metric, error):
    """A figure that could not be measured: the exception's type and the start of its message."""
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {str(error).strip()}"
    reason = " ".join(reason.split())[:100]
    print(f"PERF {token(subject)}.{token(variant)}.{token(metric)}=FAILED reason={reason}", flush=True)


def parse(lines):
    """(subject, variant, metric, value, rest) of each well-formed PERF line, in order."""
    return [m.groups() for m in map(PERF_LINE.match, (line.rstrip("\n") for line in lines)) if m]


def _render(subject, figures):
    """One subject's figures [(variant, metric, value)] on one line, in the shorter of two forms:
    ``subject: metric variant=value ... | metric ...`` or, as a table,
    ``subject [metric ...]: variant value ...; variant ...`` ('-' where a variant lacks a metric)."""
    by_metric = {}
    for variant, metric, value in figures:
        by_metric.setdefault(metric, []).append(f"{variant}={value}")
    lines = [f"{subject}: " + " | ".join(f"{metric} " + " ".join(items) for metric, items in by_metric.items())]
    cells = {(variant, metric): value for variant, metric, value in figures}
    if len(cells) == len(figures):  # each (variant, metric) once
        variants = list(dict.fromkeys(variant for variant, _, _ in figures))
        rows = [" ".join([variant] + [cells.get((variant, metric), "-") for metric in by_metric]) for variant in variants]
        lines.append(f"{subject} [{' '.join(by_metric)}]: " + "; ".join(rows))
    return min(lines, key=len)


def perf_summary(lines):
    """One line per subject (``_render``), in first-seen order."""
    subjects = {}
    for subject, variant, metric, value, rest in parse(lines):
        if value == "FAILED":
            value = "FAILED(" + token((rest or "").removeprefix("reason=").split(":")[0])[:30] + ")"
        subjects.setdefault(subject, []).append((variant, metric, value))
    return [_render(subject, figures) for subject, figures in subjects.items()]


def summary(phase_lines, lines, limit=SUMMARY_LIMIT):
    """The SUMMARY block (a list of lines); what would pass ``limit`` bytes is cut, and said."""
    body = [line.rstrip("\n")[:240] for line in phase_lines if line.strip()] + perf_summary(lines)
    head, tail = "=== SUMMARY (phases, test counts, every PERF figure)", "=== END SUMMARY"
    kept, size = [], len(head) + len(tail) + 2
    for i, line in enumerate(body):
        if size + len(line.encode()) + 1 > limit - 100:  # room for the line that says so
            kept.append(f"[{len(body) - i} more lines cut to stay under {limit} bytes: see the PERF lines above]")
            break
        kept.append(line)
        size += len(line.encode()) + 1
    return [head, *kept, tail]


def main(argv=None):
    """python -m benchmarks.report PHASES_FILE PERF_FILE: print the SUMMARY block."""
    phases_path, perf_path = (argv or sys.argv[1:])[:2]
    with open(phases_path) as phases, open(perf_path) as perf_lines:
        print("\n".join(summary(phases, perf_lines)), flush=True)


if __name__ == "__main__":
    main()
