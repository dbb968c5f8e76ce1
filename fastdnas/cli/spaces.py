"""The search spaces of the search and train commands, and the checks of their own settings."""
from .autodeeplab import autodeeplab_search, autodeeplab_train
from .common import UsageError, check_positive
from .darts import check_method_settings, darts_config_options, darts_search, darts_train
from .defaults import SEARCH_NB201
from .nb201 import check_nb201_settings, nb201_search


def space_config_options(space, settings):
    """SearchConfig settings a space fixes (NAS-Bench-201: the authors' step for the method; DARTS:
    GDAS's with --gdas-variant authors)."""
    if space == "darts":
        return darts_config_options(settings)
    if space != "nb201":
        return {}
    from ..nb201.runs import search_config_options

    return search_config_options(settings)


SEARCH_SPACES = {"darts": darts_search, "autodeeplab": autodeeplab_search, "nb201": nb201_search}
TRAIN_SPACES = {"darts": darts_train, "autodeeplab": autodeeplab_train}


def check_space_settings(command, space, settings):
    """The settings only one search space has, checked before any data is read."""
    if (command, space) == ("search", "darts"):
        check_method_settings(settings)
    if (command, space) == SEARCH_NB201:
        check_nb201_settings(settings)
    check_positive(settings, {("search", "darts"): ["init_channels"], ("train", "darts"): ["init_channels", "layers"],
                              SEARCH_NB201: ["init_channels"],
                              ("search", "autodeeplab"): ["blocks", "filter_multiplier"],
                              ("train", "autodeeplab"): ["filter_multiplier"]}[command, space])
    if space == "autodeeplab" and settings["batch_size"] < 2:
        raise UsageError(f"--batch-size must be >= 2 for autodeeplab, got {settings['batch_size']} (the ASPP "
                         "image-pooling branch normalises over the batch)")
    if settings.get("crop_size") is not None and settings["crop_size"] < 1:
        raise UsageError(f"--crop-size must be >= 1, got {settings['crop_size']}")
