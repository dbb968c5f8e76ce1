"""Registers, spills and shared memory of every CUDA kernel, as ptxas reports them: no GPU needed.

    python -m benchmarks.ptxas_table [--arch sm_90] [--json PATH] [FILE.cu ...]

Each .cu under csrc/ is compiled (device code only, to a throw-away object) with the flags
setup.py gives nvcc, plus ``-Xptxas -v``; ptxas's "Used N registers" lines are matched to the
kernels they describe and printed as one markdown table, one row per kernel instantiation.
Register counts decide occupancy (65,536 registers per SM on sm_60-sm_90: a 256-thread block
with more than 64 registers a thread fits fewer than 4 blocks per SM); spill bytes are local
memory traffic.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNCTION = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\d+)'")
USAGE = re.compile(r"Used (?P<registers>\d+) registers")
SPILLS = re.compile(r"(?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads")
SHARED = re.compile(r"(?P<smem>\d+) bytes smem")


def load_setup():
    """setup.py as a module (its build runs only as __main__): its nvcc flags and header links."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fastdnas_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nvcc_command(source, arch, setup):
    import sysconfig

    import torch
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    includes = include_paths(device_type="cuda") if "device_type" in include_paths.__code__.co_varnames \
        else include_paths(cuda=True)
    headers = setup.missing_cuda_headers_dir()
    includes = includes + ([headers] if headers else []) + [sysconfig.get_paths()["include"]]
    # The language standard torch's extension builder picks (C++17 up to torch 2.11, C++20 later).
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    nvcc_flags = setup.extension()[0].extra_compile_args["nvcc"]
    return ([os.path.join(setup.CUDA_HOME, "bin", "nvcc"), "-std=c++20" if version >= (2, 12) else "-std=c++17",
             *nvcc_flags, f"-arch={arch}", "-Xptxas", "-v", "-DTORCH_API_INCLUDE_EXTENSION_H",
             "-DTORCH_EXTENSION_NAME=_C", *COMMON_NVCC_FLAGS, "--compiler-options", "-fPIC", "-c", source,
             "-o", os.devnull] + [f"-I{path}" for path in includes])


def demangle(names, cuda_home):
    """Readable names: cu++filt where the toolkit has it, else binutils' c++filt (the same mangling)."""
    import shutil

    tool = os.path.join(cuda_home, "bin", "cu++filt")
    tool = tool if os.path.exists(tool) else shutil.which("c++filt")
    if tool is None:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def short_name(demangled):
    """'void fastdnas::(anonymous namespace)::kernel<c10::Half, float>(...)' -> 'kernel<Half, float>'."""
    name = demangled.replace("(anonymous namespace)::", "").split("(", 1)[0]
    return re.sub(r"^void |fastdnas::|c10::|cuda_reduce::", "", name)


def parse(output):
    """[(mangled name, registers, spill stores, spill loads, shared bytes)] from ptxas -v output."""
    rows, current = [], None
    for line in output.splitlines():
        match = FUNCTION.search(line)
        if match:
            current = {"name": match["name"], "stores": 0, "loads": 0, "smem": 0}
            continue
        if current is None:
            continue
        if (match := SPILLS.search(line)):
            current["stores"], current["loads"] = int(match["stores"]), int(match["loads"])
        if (match := USAGE.search(line)):
            current["registers"] = int(match["registers"])
            if (shared := SHARED.search(line)):
                current["smem"] = int(shared["smem"])
            rows.append(current)
            current = None
    return rows


def compile_one(source, arch, setup):
    result = subprocess.run(nvcc_command(source, arch, setup), capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{result.stderr[-3000:]}")
    return source, parse(result.stdout + result.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", help="the .cu files (default: csrc/*/*_cuda.cu)")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", 2)))
    args = parser.parse_args(argv)
    os.environ["FASTDNAS_CUDA"] = "1"  # setup.extension() then gives the CUDA flags (or says why it cannot)
    setup = load_setup()
    sources = args.sources or sorted(glob.glob(os.path.join("csrc", "*", "*_cuda.cu"), root_dir=ROOT))
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda s: compile_one(s, args.arch, setup), sources))
    table = []
    for source, rows in results:
        names = demangle([r["name"] for r in rows], setup.CUDA_HOME)
        for row, name in zip(rows, names):
            table.append({"file": os.path.basename(source), "kernel": short_name(name), **{k: row[k] for k in
                          ("registers", "stores", "loads", "smem")}})
    print(f"ptxas -v, {args.arch}, nvcc flags of setup.py ({len(table)} kernel instantiations)\n")
    print("| file | kernel | registers | spill stores / loads (bytes) | static shared (bytes) |")
    print("| --- | --- | --- | --- | --- |")
    for row in table:
        print(f"| {row['file']} | `{row['kernel']}` | {row['registers']} | {row['stores']} / {row['loads']} | "
              f"{row['smem']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "kernels": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
