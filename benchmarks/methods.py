"""The search methods side by side: one first-order search step (``Search.search_step``: the
architecture step on a val batch, then the weight step on a train batch) of DARTS, PC-DARTS
(K = 4), GDAS, GDAS as its authors run it ("gdas-authors": their supernet with the multiple of 3
cells nearest the setting, their step order, clipping and Nesterov) and the presets of parts
(DrNAS with K = 4, SDARTS-RS, SDARTS-ADV, beta-DARTS, FairDARTS, DARTS-PT) on the same DARTS
supernet settings, reference eager and fused eager (and, on CUDA, fused + CUDA graphs; GDAS there
in its dense form, every candidate run; not gdas-authors, whose noise check runs on the host). DARTS-PT's
selection phase gets two rows of its own: a tuning step (the weight step on the projected
weights, one edge decided) and an evaluation batch (the supernet's forward in training mode,
no gradients, one operation's weight zeroed), the two things that phase repeats.

The variants are timed interleaved: every round runs one step of each in turn, and the table
gives each one's median over the rounds, so a machine whose load changes moves all of them
alike. GDAS's step depends on the operations it samples; the median is over steps with their
own samples. Memory: CPU, bytes autograd saves for backward in one forward (GDAS: the mean over
8 forwards); CUDA, peak allocated over the rounds. ``vs_darts``: the reference eager DARTS step's
time over this one's.
"""
import gc
import time

import torch

from fastdnas import darts
from fastdnas.darts import composed
from fastdnas.darts.gdas_authors import AuthorsGdasNetwork
from fastdnas.search import Search, SearchConfig

from .search_step import _Sized, saved_bytes

METHODS = ("darts", "pc-darts", "gdas", "gdas-authors", "drnas", "sdarts-rs", "sdarts-adv", "beta-darts", "fair-darts", "darts-pt",
           "darts-pt tuning", "darts-pt evaluation")
# GDAS as its authors run it (--gdas-variant authors): their step order, clipping and Nesterov.
AUTHORS_STEP = dict(weight_step_first=True, nesterov=True, clip_with_arch=True)
# DARTS-PT's selection phase: rows of their own, by name -> the row's label.
SELECTION = {"darts-pt tuning": "darts-pt tuning step", "darts-pt evaluation": "darts-pt evaluation"}
# C=16 on the CPU as well: PC-DARTS's candidates then get 4 channels (2-channel convolutions
# abort inside oneDNN's backward on some CPUs).
SETTINGS = {
    "cuda": dict(C=16, layers=8, batch=64, image_size=32, rounds=30),
    "cpu": dict(C=16, layers=5, batch=16, image_size=16, rounds=7),
    "quick": dict(C=8, layers=3, batch=8, image_size=16, rounds=3),
}


def build(method, backend, dense=False, **network):
    method = method.split()[0]  # a DARTS-PT selection row: the DARTS-PT supernet
    if method == "gdas-authors":  # their supernet takes 3N cells: the multiple of 3 nearest ``layers``
        network["layers"] = 3 * max(1, round(network["layers"] / 3))
        return AuthorsGdasNetwork(backend=backend, sampled_only=not dense, **network)
    if method not in ("darts", "pc-darts", "gdas"):  # the presets of parts; DrNAS with K = 4 (6 does not divide 16)
        overrides = {"partial_channels": 4} if method == "drnas" else None
        return composed.preset_network(method, overrides, backend=backend, **network)
    if method == "pc-darts":
        return darts.PCDartsNetwork(backend=backend, partial_channels=4, **network)
    if method == "gdas":
        return darts.GdasNetwork(backend=backend, sampled_only=not dense, **network)
    return darts.SearchNetwork(backend=backend, **network)


def make_variant(method, variant, device, s):
    torch.manual_seed(0)
    graphs = variant.endswith("graphs")
    model = build(method, variant.split()[0], dense=graphs, C=s["C"], num_classes=10, layers=s["layers"])
    if hasattr(model, "set_search_epoch"):
        model.set_search_epoch(0, 2)
    step_order = AUTHORS_STEP if method == "gdas-authors" else {}
    search = Search(model, _Sized(s["batch"]), _Sized(s["batch"]),
                    SearchConfig(batch_size=s["batch"], epochs=1, **step_order), device=device, progress=False,
                    log=lambda *a: None, cuda_graphs=graphs)
    size = s["image_size"]
    batches = [t.to(device) for _ in range(2) for t in (torch.randn(s["batch"], 3, size, size),
                                                          torch.randint(0, 10, (s["batch"],)))]
    if method in SELECTION:
        return search, selection_step(method, search, batches)
    return search, lambda: search.search_step(*batches)


def selection_step(method, search, batches):
    """One step of DARTS-PT's selection phase as PerturbationSelection runs it: a tuning step
    (weights only, on the projected weights; the alphas frozen) or an evaluation batch (one
    operation's weight zeroed on an undecided edge)."""
    from fastdnas.darts.perturbation_selection import PerturbationSelection

    model, selection = search.model, PerturbationSelection(search, log=lambda *a: None)
    selection.ops[0][0] = 1  # one normal edge decided, as after the first decision
    for p in model.arch_parameters():
        p.requires_grad_(False)
    if method == "darts-pt tuning":
        def step():
            model.override = selection.weights()
            try:
                search.weight_step(*batches[:2])
            finally:
                model.override = None
        return step
    trial = list(selection.weights())
    trial[0] = trial[0].clone()
    trial[0][1, 2] = 0.0  # an undecided edge, one operation removed

    @torch.no_grad()
    def step():
        model.train()
        model.override = tuple(trial)
        try:
            (model(batches[2]).argmax(1) == batches[3]).sum()
        finally:
            model.override = None
    return step


def run(device, quick=False, min_run_time=1.0, methods=METHODS, rounds=None, warmup=5, **_):
    s = dict(SETTINGS["quick" if quick else device])
    if rounds is not None:
        s["rounds"] = rounds
    kinds = ["reference eager", "fused eager"] + (["fused graphs"] if device == "cuda" else [])
    case = f"C{s['C']} L{s['layers']} {s['batch']}x3x{s['image_size']}x{s['image_size']}"
    variants, rows, timed = {}, [], []  # timed: (method, row) of every timed row
    for method in methods:
        for kind in kinds:
            if method == "gdas-authors" and kind.endswith("graphs"):
                continue  # its noise check runs on the host: no captured step
            row = {"bench": SELECTION.get(method, f"{method} search step"), "case": case, "device": device,
                   "variant": kind}
            timed.append((method, row))
            try:
                search, step = make_variant(method, kind, device, s)
                for _ in range(warmup):  # lazy optimizer state, graph warm-up and capture
                    step()
                if device == "cpu" and kind.endswith("eager") and method not in SELECTION:
                    forwards = 8 if method.startswith("gdas") else 1
                    inputs = torch.randn(s["batch"], 3, s["image_size"], s["image_size"])
                    row["saved_MB"] = sum(saved_bytes(lambda: search.model(inputs).sum())
                                          for _ in range(forwards)) / forwards / 2**20
                variants[method, kind] = (search, step, [])
            except Exception as error:  # one variant failing must not hide the others
                row["note"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
            rows.append(row)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(s["rounds"]):  # interleaved: one step of every variant per round
        for search, step, times in variants.values():
            start = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    for method, row in timed:
        key = (method, row["variant"])
        if key in variants:
            times = sorted(variants[key][2])
            row["ms"] = times[len(times) // 2] * 1e3
    if device == "cuda":
        rows.append({"bench": "all methods", "case": case, "device": device, "variant": "every variant above",
                     "peak_MB": torch.cuda.max_memory_allocated() / 2**20})
    by_key = {(r["bench"], r["variant"]): r for r in rows}
    darts_reference = by_key.get(("darts search step", "reference eager"), {})
    for row in rows:
        reference = by_key.get((row["bench"], "reference eager"), {})
        if "ms" in row and "ms" in reference:
            row["speedup"] = reference["ms"] / row["ms"]
        if "ms" in row and "ms" in darts_reference:
            row["vs_darts"] = darts_reference["ms"] / row["ms"]
        if "saved_MB" in row and "saved_MB" in reference:
            row["mem_ratio"] = row["saved_MB"] / reference["saved_MB"]
    variants.clear()
    gc.collect()
    return rows


if __name__ == "__main__":  # python -m benchmarks.methods --methods darts drnas --rounds 3 --out FILE.json
    import argparse
    import json

    parser = argparse.ArgumentParser(description="the search methods' steps, reference eager vs fused eager")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.device, methods=args.methods, rounds=args.rounds, warmup=args.warmup)
    for row in result:
        print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
