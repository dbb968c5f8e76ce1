"""The settings every command knows, with their built-in defaults per dataset and per method."""
# Shared by search and retraining, then the dataset-sized settings of each.
COMMON_DEFAULTS = {"dataset": "digits", "data": "data", "device": None, "threads": None, "log_interval": 50,
                   "amp": None}
SEARCH_DEFAULTS = {
    "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0,
    "arch_lr": 3e-4, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3, "unrolled": False, "arch_start_epoch": 0,
    "sync_bn": False,
    "backend": "fused", "seed": 2, "epochs": 50, "batch_size": 64, "init_channels": 16, "layers": 8,
    "cuda_graphs": False,
    # The search method, and the settings of the one that has them.
    "method": "darts", "partial_channels": 4, "tau_max": 10.0, "tau_min": 0.1,
    "gdas_variant": "default",  # gdas: "authors" for the authors' supernet and step (README, "PC-DARTS and GDAS")
    # The parts of a preset replaced (fastdnas.darts.composed); None: the preset's own.
    "arch_weights": None, "perturbation": None, "regulariser": None, "selection": None,
    "pt_interval": 5,  # DARTS-PT: tuning epochs between decisions (81 tuning epochs at 5)
    # DrNAS's progressive schedule (SPEC 8.1): the stages, and K and the operations kept per edge
    # of the stages after the first (the first: --partial-channels, every operation).
    "drnas_stages": 2, "drnas_partial_channels": [4], "drnas_keep_ops": [4],
}
SEARCH_METHODS = ("darts", "pc-darts", "gdas", "drnas", "sdarts-rs", "sdarts-adv", "beta-darts", "fair-darts",
                  "darts-pt")
METHOD_SETTINGS = {"partial_channels": ("pc-darts", "drnas"), "tau_max": ("gdas",), "tau_min": ("gdas",),
                   "gdas_variant": ("gdas",), "pt_interval": ("darts-pt",), "drnas_stages": ("drnas",),
                   "drnas_partial_channels": ("drnas",), "drnas_keep_ops": ("drnas",)}
GDAS_VARIANTS = ("default", "authors")
PART_SETTINGS = ("arch_weights", "perturbation", "regulariser", "selection")
# Per (method, dataset): applied over the dataset defaults (a config file and flags still win).
SEARCH_METHOD_DEFAULTS = {
    # PC-DARTS's CIFAR search: batch 256, SGD lr 0.1 cosine to 0, Adam 6e-4 on alphas and betas,
    # architecture updates from epoch 15 of 50, K = 4.
    ("pc-darts", "cifar10"): {"batch_size": 256, "lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4, "arch_start_epoch": 15},
    ("pc-darts", "cifar100"): {"batch_size": 256, "lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4, "arch_start_epoch": 15},
    # The digits network of DARTS at C=16, so that the candidates get 4 channels (2-channel
    # convolutions abort on some CPUs inside torch's oneDNN backward); the arch lr 10x the paper's
    # (as for DARTS), warm-up 15/50 of the epochs.
    ("pc-darts", "digits"): {"init_channels": 16, "arch_lr": 6e-3, "arch_start_epoch": 4},
    # GDAS's CIFAR search runs 240 epochs (tau 10 -> 0.1); the rest as DARTS.
    ("gdas", "cifar10"): {"epochs": 240},
    ("gdas", "cifar100"): {"epochs": 240},
    # --gdas-variant authors (applied over the gdas ones): their DARTS-space configuration (SPEC 5b;
    # GDAS-NASNet-CIFAR.config and the search-arch config): C=16, N=2 (6 cells), batch 256, 250
    # epochs, weight decay 5e-4. Digits and synthetic: their sizes, 3N cells, the authors' decay.
    **{("gdas-authors", d): {"epochs": 250, "batch_size": 256, "weight_decay": 5e-4, "init_channels": 16,
                             "layers": 6} for d in ("cifar10", "cifar100")},
    ("gdas-authors", "digits"): {"weight_decay": 5e-4, "layers": 6},
    ("gdas-authors", "synthetic"): {"weight_decay": 5e-4},
    # DrNAS on the DARTS space (SPEC 8.1, DARTS-space/train_search.py:25-46, 120-182): batch 64,
    # SGD lr 0.1 cosine to 0 over all 50 epochs, Adam 6e-4 (its 'l2' regulariser: weight decay 1e-3
    # on theta), C=36, 20 layers; two stages of 25 epochs, K 6 -> 4, operations 7 -> 4, theta
    # updated from the stage-local epoch 10 in each.
    **{("drnas", d): {"lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4, "partial_channels": 6, "init_channels": 36,
                      "layers": 20, "arch_start_epoch": 10} for d in ("cifar10", "cifar100")},
    # Digits: the same rule scaled to 5 + 5 epochs (theta updated from the stage-local epoch 2 =
    # 10/25 of a stage), K 4 -> 2 at C=16 (6 does not divide 16).
    ("drnas", "digits"): {"init_channels": 16, "arch_lr": 6e-3, "partial_channels": 4, "arch_start_epoch": 2,
                          "epochs": 10, "drnas_partial_channels": [2]},
    ("drnas", "synthetic"): {"init_channels": 8, "partial_channels": 2, "drnas_partial_channels": [1]},
    # SDARTS and beta-DARTS: DARTS's settings (SPEC 8.2: sota/cnn/train_search.py:34-57; 8.3).
    # FairDARTS (SPEC 8.4): batch 128, SGD lr 0.005 -> 0.001, Adam 3e-3 with betas (0.9, 0.999).
    **{("fair-darts", d): {"batch_size": 128, "lr": 0.005, "arch_lr": 3e-3, "arch_betas": [0.9, 0.999]}
       for d in ("cifar10", "cifar100")},
    ("fair-darts", "digits"): {"arch_betas": [0.9, 0.999], "arch_lr": 3e-2},
    ("fair-darts", "synthetic"): {"arch_betas": [0.9, 0.999]},
    # DARTS-PT (SPEC 8.5): the supernet as DARTS; a decision every tuning epoch on the small sets.
    ("darts-pt", "digits"): {"pt_interval": 1},
    ("darts-pt", "synthetic"): {"pt_interval": 1},
}
# Fewer GDAS steps than this (the digits default: 12 x 11 = 132) leave each sampled candidate too
# little training for the supernet to learn (README, "PC-DARTS and GDAS"): the start line says so.
GDAS_FEW_STEPS = 1000
SEARCH_DATASET_DEFAULTS = {
    "cifar10": {},  # SPEC section 2 as it stands
    "cifar100": {},
    # A narrow 5-cell network, 11 steps an epoch (times and results measured: README); with far fewer
    # steps than a CIFAR search, a 10x larger arch lr lets the alphas move visibly.
    "digits": {"epochs": 12, "batch_size": 64, "init_channels": 8, "layers": 5, "arch_lr": 3e-3},
    "synthetic": {"epochs": 2, "batch_size": 16, "init_channels": 4, "layers": 3, "arch_lr": 3e-3},
}
TRAIN_DEFAULTS = {
    "lr": 0.025, "lr_min": 0.0, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0,
    "auxiliary": False, "auxiliary_weight": 0.4, "drop_path_prob": 0.2, "cutout": 0, "seed": 0,
    "epochs": 600, "batch_size": 96, "init_channels": 36, "layers": 20, "sync_bn": False,
}
TRAIN_DATASET_DEFAULTS = {
    # The DARTS CIFAR recipe (its reported numbers use the auxiliary head and cutout).
    "cifar10": {"auxiliary": True, "cutout": 16},
    "cifar100": {"auxiliary": True, "cutout": 16},
    # Sized for a CPU (times and accuracy measured: README, "The two commands").
    "digits": {"epochs": 20, "batch_size": 64, "init_channels": 16, "layers": 5, "lr": 0.05, "drop_path_prob": 0.1},
    "synthetic": {"epochs": 2, "batch_size": 16, "init_channels": 4, "layers": 3, "drop_path_prob": 0.0},
    # The DARTS ImageNet mobile recipe (train_imagenet.py): 14 cells at C=48, label smoothing 0.1.
    "imagenet": {"epochs": 250, "batch_size": 128, "init_channels": 48, "layers": 14, "lr": 0.1,
                 "weight_decay": 3e-5, "auxiliary": True, "drop_path_prob": 0.0},
}
# Auto-DeepLab (SPEC section 4): first order; alphas and betas share one Adam; architecture
# updates only in the second half. crop_size None: the dataset's own (shapes: the whole image).
AUTODEEPLAB_SEARCH_DEFAULTS = {
    "dataset": "shapes",
    "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0,
    "arch_lr": 3e-3, "arch_betas": [0.9, 0.999], "arch_weight_decay": 1e-3, "unrolled": False,
    "arch_start_epoch": 20, "backend": "fused", "seed": 2, "epochs": 40, "batch_size": 2, "sync_bn": False,
    "layers": 12, "blocks": 5, "filter_multiplier": 8, "crop_size": None, "cuda_graphs": False,
}
AUTODEEPLAB_SEARCH_DATASET_DEFAULTS = {
    "cityscapes": {},  # 321x321 crops of half-resolution images, batch 2 (the paper's search)
    "voc": {},
    # A CPU-sized search (times measured: README): a 4-layer trellis of 3-block cells, F = 4, on
    # 64 x 64 crops. One thread: the supernet's thousands of tiny ops gain nothing from a second.
    "shapes": {"epochs": 6, "arch_start_epoch": 3, "batch_size": 16, "layers": 4, "blocks": 3,
               "filter_multiplier": 4, "crop_size": 64, "threads": 1},
}
AUTODEEPLAB_TRAIN_DEFAULTS = {
    "dataset": "shapes",
    "lr": 0.05, "lr_min": 0.0, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0, "seed": 0,
    "epochs": 100, "batch_size": 8, "filter_multiplier": 20, "crop_size": None, "sync_bn": False,
}
AUTODEEPLAB_TRAIN_DATASET_DEFAULTS = {
    "cityscapes": {},
    "voc": {},
    # Sized for a CPU (time and val mIoU of the default search's network measured: README).
    "shapes": {"epochs": 40, "batch_size": 16, "filter_multiplier": 16, "lr": 0.1, "threads": 1},
}
# NAS-Bench-201 (SPEC section 7): the authors' settings for the space (C=16, N=5; SGD Nesterov
# lr 0.025 -> 0.001, wd 5e-4, clip 5; Adam 3e-4 on the alphas; DARTS 50 epochs, GDAS 250).
NB201_SEARCH_DEFAULTS = {
    "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 5e-4, "grad_clip": 5.0,
    "arch_lr": 3e-4, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3, "unrolled": False, "arch_start_epoch": 0,
    "sync_bn": False, "backend": "fused", "seed": 2, "epochs": 50, "batch_size": 64, "init_channels": 16,
    "layers": 5, "cuda_graphs": False, "method": "darts", "tau_max": 10.0, "tau_min": 0.1,
    "track_running_stats": True, "benchmark": None, "split_file": None,
}
NB201_SEARCH_DATASET_DEFAULTS = {
    "cifar10": {}, "cifar100": {}, "ImageNet16-120": {},
    # A CPU-sized supernet on 8x8 digits: C=8, 2 cells per stage, 12 epochs of 11 steps, the arch lr
    # 10x the paper's (as for search darts on digits).
    "digits": {"epochs": 12, "init_channels": 8, "layers": 2, "arch_lr": 3e-3},
    "synthetic": {"epochs": 2, "batch_size": 16, "init_channels": 4, "layers": 1, "arch_lr": 3e-3},
}
NB201_METHODS = ("darts", "gdas")
NB201_METHOD_DEFAULTS = {("gdas", d): {"epochs": 250} for d in ("cifar10", "cifar100", "ImageNet16-120")}
# (command, space) -> (defaults, dataset defaults): the settings each command knows.
SETTINGS = {
    ("search", "darts"): (SEARCH_DEFAULTS, SEARCH_DATASET_DEFAULTS),
    ("train", "darts"): (TRAIN_DEFAULTS, TRAIN_DATASET_DEFAULTS),
    ("search", "autodeeplab"): (AUTODEEPLAB_SEARCH_DEFAULTS, AUTODEEPLAB_SEARCH_DATASET_DEFAULTS),
    ("train", "autodeeplab"): (AUTODEEPLAB_TRAIN_DEFAULTS, AUTODEEPLAB_TRAIN_DATASET_DEFAULTS),
    ("search", "nb201"): (NB201_SEARCH_DEFAULTS, NB201_SEARCH_DATASET_DEFAULTS),
}
# Per space: (method, dataset) -> the method's own defaults.
METHOD_DEFAULTS = {"darts": SEARCH_METHOD_DEFAULTS, "nb201": NB201_METHOD_DEFAULTS}
# The spaces of each command.
COMMAND_SPACES = {"search": ("darts", "autodeeplab", "nb201"), "train": ("darts", "autodeeplab")}
# Settings that name a file to read rather than a number (known to the train commands).
FILE_SETTINGS = {"darts": "genotype", "autodeeplab": "arch"}
# What --resume may change; every other setting must match the interrupted run. How the run is
# executed may change (the checkpoint does not depend on the precision or the number of ranks).
RESUME_MAY_CHANGE = {"out", "device", "threads", "log_interval", "data", "resume", "config", "amp", "sync_bn", "cuda_graphs",
                     "allow_unverified_checkpoint", "benchmark"}
# Flags about this invocation only: not settings of the run (kept out of settings.json and the checkpoint).
INVOCATION_ONLY = ("resume", "config", "allow_unverified_checkpoint")
SEARCH_CONFIG_KEYS = ("epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "arch_lr",
                      "arch_betas", "arch_weight_decay", "unrolled", "arch_start_epoch", "seed", "log_interval",
                      "amp", "sync_bn")
TRAIN_CONFIG_KEYS = ("epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "seed",
                     "log_interval", "amp")


SEARCH_DARTS, TRAIN_DARTS = ("search", "darts"), ("train", "darts")
SEARCH_ADL, TRAIN_ADL = ("search", "autodeeplab"), ("train", "autodeeplab")
SEARCH_NB201 = ("search", "nb201")
EVERY = (SEARCH_DARTS, SEARCH_ADL, TRAIN_DARTS, TRAIN_ADL, SEARCH_NB201)
SEARCHES = (SEARCH_DARTS, SEARCH_ADL, SEARCH_NB201)
DARTS, AUTODEEPLAB = (SEARCH_DARTS, TRAIN_DARTS), (SEARCH_ADL, TRAIN_ADL)
