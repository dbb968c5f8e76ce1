"""Memory and time of NAS-Bench-201 lookups through nats_bench's lazy archive (fast_mode), on an
archive written in its format (fastdnas.nb201.testing) with the real files' structure per cell:
four datasets, three training seeds, 200 epochs of metrics (and the 12-epoch schedule), and the
meta data listing all 15,625 cells. The real archive's cells hold the same kind of entries, so
the cost per looked-up cell is of this order; the real file's own size was not measured here.

    python -m benchmarks.nb201_lookup [--cells N] [--folder DIR]
"""
import argparse
import os
import tempfile
import time

from fastdnas.nb201 import cell_from_index, genotype_string


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=20, help="cells written and looked up")
    parser.add_argument("--folder", help="where to write the archive (default: a temporary folder)")
    args = parser.parse_args(argv)
    from fastdnas.nb201.benchmark import FIGURES, Benchmark
    from fastdnas.nb201.testing import write_archive

    cells = [genotype_string(cell_from_index(i * 7919 % 15625)) for i in range(args.cells)]
    folder = args.folder or tempfile.mkdtemp()
    path = write_archive(os.path.join(folder, "archive"), {c: {k: [90.0, 91.0, 92.0] for k in FIGURES} for c in cells})
    per_cell = [os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f != "meta.pickle.pbz2"]
    start_rss = rss_mb()
    start = time.perf_counter()
    benchmark = Benchmark(path)
    opened_s, opened_rss = time.perf_counter() - start, rss_mb()
    times = []
    for cell in cells:
        start = time.perf_counter()
        benchmark.lookup(cell)
        times.append(time.perf_counter() - start)
    end_rss = rss_mb()
    print(f"archive: meta {os.path.getsize(os.path.join(path, 'meta.pickle.pbz2')) / 1024:.0f} KB, "
          f"{sum(per_cell) / len(per_cell) / 1024:.0f} KB per cell file")
    print(f"open (meta of 15,625 cells): {opened_s:.2f} s, +{opened_rss - start_rss:.1f} MB resident")
    print(f"{len(cells)} lookups: {sum(times) / len(times) * 1e3:.0f} ms each (mean), "
          f"+{(end_rss - opened_rss) / len(cells):.2f} MB resident per cell looked up; "
          f"{end_rss:.0f} MB resident in all (the Python process with torch and fastdnas included)")


if __name__ == "__main__":
    main()
