"""The NAS-Bench-201 space: what search nb201 adds to the shared search command."""
from .common import SearchRun, UsageError
from .defaults import NB201_METHODS


def nb201_search(settings, data):
    from ..nb201.benchmark import BenchmarkError
    from ..nb201.runs import nb201_search as make, open_benchmark

    try:
        benchmark = open_benchmark(settings)
    except BenchmarkError as error:
        raise UsageError(str(error)) from error
    return make(settings, data, SearchRun, benchmark)


def load_nb201(settings):
    from ..nb201.data import load_nb201_data

    try:
        return load_nb201_data(settings["dataset"], settings["data"], settings["split_file"])
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    except ValueError as error:
        raise UsageError(str(error)) from error


def check_nb201_settings(settings):
    method = settings["method"]
    if method not in NB201_METHODS:
        raise UsageError(f"--method must be one of {list(NB201_METHODS)} for nb201, got {method!r}")
    if method != "gdas" and (settings["tau_max"], settings["tau_min"]) != (10.0, 0.1):
        raise UsageError("--tau-max and --tau-min apply to --method gdas only")
    if method == "gdas":
        if not 0 < settings["tau_min"] <= settings["tau_max"]:
            raise UsageError(f"gdas needs 0 < --tau-min <= --tau-max, got {settings['tau_min']} and {settings['tau_max']}")
        if settings["unrolled"]:
            raise UsageError("--unrolled does not apply to --method gdas (a first-order method)")
    if settings["cuda_graphs"]:
        raise UsageError("--cuda-graphs does not apply to nb201 (its step takes the weight step first or clips "
                         "with the alphas, which the captured step does not)")
