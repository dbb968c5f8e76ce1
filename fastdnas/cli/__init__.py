"""Command line: fastdnas search darts|autodeeplab|nb201 ..., fastdnas train darts|autodeeplab ... and
fastdnas score nb201 .... One module per command and per search space; every name they define is
importable from here too (patch a name in the module that uses it).

Settings come, later ones winning, from: built-in defaults, the dataset's defaults, ``--config
FILE.json`` (same keys as the flags, '-' or '_'), and the flags given on the command line.
"""
from .autodeeplab import autodeeplab_search, autodeeplab_train
from .common import (
    SearchRun, Terminated, TrainRun, UsageError, check_positive, default_threads, describe_device, load_data,
    make_config, pick_device, raise_terminated, read_config_file, resolve_settings)
from .darts import check_method_settings, darts_search, darts_train, describe_parts, method_parts, uses_parts
from .defaults import (
    AUTODEEPLAB, AUTODEEPLAB_SEARCH_DATASET_DEFAULTS, AUTODEEPLAB_SEARCH_DEFAULTS,
    AUTODEEPLAB_TRAIN_DATASET_DEFAULTS, AUTODEEPLAB_TRAIN_DEFAULTS, COMMAND_SPACES, COMMON_DEFAULTS, DARTS, EVERY,
    FILE_SETTINGS, GDAS_FEW_STEPS, INVOCATION_ONLY, METHOD_DEFAULTS, METHOD_SETTINGS, NB201_METHODS,
    NB201_METHOD_DEFAULTS, NB201_SEARCH_DATASET_DEFAULTS, NB201_SEARCH_DEFAULTS, PART_SETTINGS, RESUME_MAY_CHANGE,
    SEARCHES, SEARCH_ADL, SEARCH_CONFIG_KEYS, SEARCH_DARTS, SEARCH_DATASET_DEFAULTS, SEARCH_DEFAULTS,
    SEARCH_METHODS, SEARCH_METHOD_DEFAULTS, SEARCH_NB201, SETTINGS, TRAIN_ADL, TRAIN_CONFIG_KEYS, TRAIN_DARTS,
    TRAIN_DATASET_DEFAULTS, TRAIN_DEFAULTS)
from .entry import main, same_run
from .nb201 import check_nb201_settings, load_nb201, nb201_search
from .parser import (
    DATASET_HELP, DESCRIPTIONS, FLAGS, NONE_MEANS, OneLineParser, build_parser, default_text, every_flag,
    on_datasets, own_flags, show_value)
from .resume import changed_settings, check_resume_state, read_resume_state, refused_checkpoint, resume_note, shape_of
from .score import add_score_command, run_nb201_score
from .search import describe_method, run_nb201_search, run_search, start_distributed
from .spaces import SEARCH_SPACES, TRAIN_SPACES, check_space_settings, space_config_options
from .train import read_architecture, run_train
