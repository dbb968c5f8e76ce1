"""The Auto-DeepLab space: search autodeeplab and train autodeeplab."""
import os

from .common import SearchRun, TrainRun


def autodeeplab_search(settings, data):
    from functools import partial

    from ..autodeeplab import SearchNetwork, arch_to_dict, save_arch
    from ..segmentation import SegmentationMetrics, segmentation_loss
    from ..viz import plot_alpha_history, plot_cell, plot_trellis

    model = SearchNetwork(data.num_classes, layers=settings["layers"], blocks=settings["blocks"],
                          filter_multiplier=settings["filter_multiplier"], backend=settings["backend"],
                          in_channels=data.in_channels)

    def finish(model, search, out):
        arch = arch_to_dict(model.decode())
        save_arch(arch, os.path.join(out, "arch.json"))
        plot_trellis(model.normalized_betas().detach(), arch["path"], os.path.join(out, "trellis.png"),
                     title="network level: transition probabilities and the decoded path")
        plot_cell([tuple(pair) for pair in arch["cell"]], list(range(2, 2 + model.blocks)),
                  os.path.join(out, "cell.png"), title="cell")
        plot_alpha_history(search.history["alphas"], model.primitives, os.path.join(out, "alphas.png"),
                           cell_names=("cell",))
        print(f"path (levels of layers 1..{model.layers}, rate 4 * 2^level): {arch['path']}")
        print(f"cell: {[tuple(pair) for pair in arch['cell']]}")
        return ["arch.json", "trellis.png", "cell.png", "alphas.png"]

    return SearchRun(model, loss_fn=segmentation_loss, metrics=partial(SegmentationMetrics, num_classes=data.num_classes),
                     describe=lambda m: arch_to_dict(m.decode()), finish=finish)


def autodeeplab_train(settings, data, arch):
    from functools import partial

    from ..autodeeplab import DecodedNetwork, arch_to_dict
    from ..segmentation import SegmentationMetrics, segmentation_loss


    def build():
        return DecodedNetwork(data.num_classes, arch["path"], arch["cell"], filter_multiplier=settings["filter_multiplier"],
                              blocks=len(arch["cell"]) // 2, in_channels=data.in_channels)

    def extra(records):
        ious = records[-1]["val_iou"]
        return {"val_iou_per_class": dict(zip(data.class_names, ious)), "arch": arch_to_dict(arch)}

    def report(result):
        per_class = ", ".join(f"{name} {'-' if iou is None else f'{iou:.3f}'}"
                              for name, iou in result["val_iou_per_class"].items())
        return f"val mIoU {result['val_miou']:.4f} (pixel accuracy {result['val_acc']:.4f}; {per_class})"

    return TrainRun(build, report=report, extra=extra,
                    train_options={"loss_fn": segmentation_loss, "eval_name": "val",
                                   "metrics": partial(SegmentationMetrics, num_classes=data.num_classes)},
                    config_options={"auxiliary_weight": 0.0, "drop_path_prob": 0.0})
