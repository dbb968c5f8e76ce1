"""Published cells by name, the final networks (CIFAR and ImageNet) loading original-layout
checkpoints, and the genotype converters (original text, fastdnas JSON, NNI dict)."""
import json

import pytest
import torch

from fastdnas import cli
from fastdnas.darts import (FinalNetwork, ImageNetNetwork, convert_final_state_dict, genotype_from_any_text,
                            genotype_from_nni, genotype_from_text, genotype_to_dict, genotype_to_json,
                            genotype_to_nni, label_smoothing_loss)
from fastdnas.darts import genotypes
from fastdnas.compat_cli import parameter_counts
from conftest import write_image_folder
from original_layout import OriginalFinalNetwork, randomise

pytestmark = pytest.mark.usefixtures("one_thread")

# Parameters of each published cell's CIFAR-10 (C=36, 20 cells) and ImageNet (C=48, 14 cells)
# network without auxiliary heads, as this code builds them (pinned, so a change to the cells or
# the networks shows; each is also checked against the paper's rounded figure where it gives one).
COUNTS = {
    "DARTS_V1": (3169414, 4510432), "DARTS_V2": (3349342, 4718752), "PC_DARTS_cifar": (3634678, 5270560),
    "PC_DARTS_image": (3721510, 5342464), "PDARTS": (3433798, 4944352), "GDAS_V1": (3368782, 4969216),
    "DrNAS_cifar10": (4099294, 5738464), "DrNAS_imagenet": (4048750, 5726368), "SDARTS_RS": (3606166, 5120320),
    "SDARTS_ADV": (3344806, 4768864), "DARTS_minus": (3454318, 4860256),
}
# The paper's table gives 3.3 M for the first-order DARTS cell; the released cell's network has 3.17 M.
PAPER_ROUNDS_DIFFERENTLY = {("DARTS_V1", "cifar")}


@pytest.mark.parametrize("name", list(genotypes.PUBLISHED))
def test_published_cells_build_with_the_papers_parameter_counts(name):
    entry = genotypes.PUBLISHED[name]
    assert getattr(genotypes, name) is entry.genotype and genotypes.published_genotype(name) is entry.genotype
    cifar, imagenet = parameter_counts(entry.genotype)
    assert (cifar, imagenet) == COUNTS[name]
    for network, count, paper in (("cifar", cifar, entry.cifar_params), ("imagenet", imagenet, entry.imagenet_params)):
        if paper is not None and (name, network) not in PAPER_ROUNDS_DIFFERENTLY:
            assert round(count / 1e6, 1) == paper, (network, count)
    assert entry.source.startswith("github.com/") and "genotypes.py" in entry.source


def test_names_and_aliases():
    assert genotypes.DARTS_V2 is genotypes.published_genotype("DARTS")
    assert genotypes.resolve_genotype("PCDARTS") is genotypes.PC_DARTS_cifar
    with pytest.raises(ValueError, match="no published genotype 'DARTS_V3'; known: DARTS_V1, DARTS_V2"):
        genotypes.published_genotype("DARTS_V3")


@pytest.mark.parametrize("imagenet", [False, True], ids=["cifar", "imagenet"])
@pytest.mark.parametrize("wrapping", ["plain", "data_parallel", "training_checkpoint", "old_torch"])
def test_original_final_checkpoints_load_strictly_and_give_the_same_logits(imagenet, wrapping):
    torch.manual_seed(0)
    genotype = genotypes.PDARTS  # skip, pools, separable and dilated convolutions
    original = randomise(OriginalFinalNetwork(8, 5, 5, True, genotype, imagenet=imagenet)).double().eval()
    state = original.state_dict()
    if wrapping == "data_parallel":
        state = {"module." + key: value for key, value in state.items()}
    elif wrapping == "training_checkpoint":
        state = {"epoch": 250, "state_dict": {"module." + k: v for k, v in state.items()}, "best_acc_top1": 75.0}
    elif wrapping == "old_torch":
        state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    cls = ImageNetNetwork if imagenet else FinalNetwork
    ours = cls(8, 5, 5, genotype, auxiliary=True).double().eval()
    result = ours.load_state_dict(convert_final_state_dict(state, ours))  # strict
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 64 if imagenet else 16, 64 if imagenet else 16, dtype=torch.float64)
    logits, aux = ours(x)
    assert aux is None and torch.allclose(logits, original(x), rtol=1e-10, atol=1e-12)


def test_imagenet_network_shapes_and_auxiliary_head():
    net = ImageNetNetwork(8, 7, 5, genotypes.DARTS_V2, auxiliary=True).train()
    logits, aux = net(torch.randn(2, 3, 224, 224))  # the auxiliary head's 7x7 maps: the original pooling
    assert logits.shape == aux.shape == (2, 7)
    with pytest.raises(ValueError, match="C must be even"):
        ImageNetNetwork(7, 7, 5, genotypes.DARTS_V2)


def test_checkpoint_mismatches_are_named():
    net = FinalNetwork(8, 5, 5, genotypes.DARTS_V2)
    state = randomise(OriginalFinalNetwork(8, 5, 5, True, genotypes.DARTS_V2)).state_dict()
    with pytest.raises(ValueError, match="build the network with auxiliary=True"):
        convert_final_state_dict(state, net)
    wrong = FinalNetwork(8, 5, 5, genotypes.PDARTS, auxiliary=True)
    with pytest.raises(ValueError, match=r"missing: cells\.0\._ops\.5\.op\.1\.weight, .* and 188 more; .* wrong shape: "
                                         r"cells\.0\._ops\.7\.op\.1\.weight: \[8, 1, 3, 3\] instead of \[8, 1, 5, 5\]"):
        convert_final_state_dict(state, wrong)
    with pytest.raises(ValueError, match="not a checkpoint"):
        convert_final_state_dict({"epoch": 3}, net)


def test_label_smoothing_is_the_original_loss():
    logits, target = torch.randn(6, 10, dtype=torch.float64), torch.tensor([0, 3, 9, 2, 2, 5])
    smoothed = 0.9 * torch.nn.functional.one_hot(target, 10) + 0.1 / 10
    expected = (-smoothed * logits.log_softmax(1)).mean(0).sum()
    assert torch.allclose(label_smoothing_loss(logits, target), expected)
    from fastdnas.darts.imagenet_network import imagenet_training_loss

    net = ImageNetNetwork(8, 10, 3, genotypes.DARTS_V2, auxiliary=True).double().train()
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(1)
    loss, main_logits = imagenet_training_loss(net, x, target, auxiliary_weight=0.4)
    torch.manual_seed(1)
    out, aux = net(x)
    assert torch.allclose(main_logits, out)
    assert torch.allclose(loss, label_smoothing_loss(out, target) + 0.4 * label_smoothing_loss(aux, target))


@pytest.mark.parametrize("name", list(genotypes.PUBLISHED))
def test_converters_round_trip(name):
    genotype = genotypes.PUBLISHED[name].genotype
    as_dict = genotype_to_dict(genotype)
    text = repr(genotype)
    assert genotype_to_dict(genotype_from_text(text)) == as_dict
    assert genotype_to_dict(genotype_from_any_text(genotype_to_json(genotype))) == as_dict
    for as_list in (False, True):
        nni = genotype_to_nni(genotype, input_as_list=as_list)
        assert genotype_to_dict(genotype_from_nni(nni)) == as_dict
        assert genotype_to_dict(genotype_from_any_text(json.dumps(nni))) == as_dict


def test_nni_form():
    nni = genotype_to_nni(genotypes.DARTS_V2)
    assert len(nni) == 32
    assert (nni["normal/op_2_0"], nni["normal/input_2_0"], nni["normal/op_5_1"], nni["normal/input_5_1"]) == (
        "sep_conv_3x3", 0, "dil_conv_3x3", 2)
    assert genotype_to_nni(genotypes.DARTS_V2, input_as_list=True)["reduce/input_3_0"] == [2]
    # NNI 3 adds the network's width and depth: not the cell's, ignored.
    assert genotype_from_nni(dict(nni, width=36, depth=20)) == genotype_from_nni(nni)
    del nni["reduce/input_4_1"]
    with pytest.raises(ValueError, match="'reduce/op_4_1' or 'reduce/input_4_1' is missing"):
        genotype_from_nni(nni)
    partial = genotypes.DARTS_V2._replace(normal_concat=[4, 5])
    with pytest.raises(ValueError, match="normal_concat must be every node"):
        genotype_to_nni(partial)


def test_cli_lists_and_converts(tmp_path, capsys):
    assert cli.main(["genotypes"]) == 0
    out = capsys.readouterr().out
    assert "DARTS_V2 (DARTS): DARTS (Liu, Simonyan and Yang, ICLR 2019); github.com/quark0/darts" in out
    assert all(name in out for name in genotypes.PUBLISHED)
    forms = {}
    for form in ("nni", "nni2", "json", "text"):
        path = tmp_path / f"genotype.{form}"
        source = "GDAS_V1" if not forms else str(forms[list(forms)[-1]])
        assert cli.main(["genotype", "convert", source, "--to", form, "--out", str(path)]) == 0
        forms[form] = path
    assert genotype_from_text(forms["text"].read_text()) == genotypes.GDAS_V1
    assert cli.main(["genotype", "convert", "DARTS_V2", "--to", "text"]) == 0
    assert capsys.readouterr().out.strip() == repr(genotypes.DARTS_V2)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["genotype", "convert", "DARTS_V9", "--to", "json"])
    assert exit_info.value.code == 2
    assert "cannot read 'DARTS_V9'" in capsys.readouterr().err


def test_cli_trains_a_published_cell_by_name(tmp_path, capsys):
    assert cli.main(["train", "darts", "--genotype", "DARTS_V2", "--dataset", "synthetic", "--epochs", "1",
                     "--init-channels", "4", "--layers", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "result.json").read_text())["genotype"] == genotype_to_dict(genotypes.DARTS_V2)


def test_cli_evaluates_an_original_imagenet_checkpoint(tmp_path, capsys):
    write_image_folder(tmp_path / "imagenet")
    torch.manual_seed(0)
    original = randomise(OriginalFinalNetwork(8, 3, 3, True, genotypes.PDARTS, imagenet=True)).eval()
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in original.state_dict().items()}},
               tmp_path / "checkpoint.pth.tar")
    assert cli.main(["eval", "darts", "--genotype", "PDARTS", "--checkpoint", str(tmp_path / "checkpoint.pth.tar"),
                     "--dataset", "imagenet", "--data", str(tmp_path / "imagenet"), "--init-channels", "8",
                     "--layers", "3", "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # The same images through the original network: the reported accuracies are its own.
    from fastdnas.data.imagenet import load_image_folder

    data = load_image_folder(str(tmp_path / "imagenet"))
    images, labels = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        top = original(images).topk(3, dim=1).indices
    top1 = (top[:, 0] == labels).double().mean().item()
    top5 = (top == labels[:, None]).any(1).double().mean().item()
    assert top5 == 1.0  # 3 classes: any image is in its top 5
    assert f"top-1 {top1:.4f}, top-5 {top5:.4f} (6 images)" in out
    with pytest.raises(SystemExit):
        cli.main(["eval", "darts", "--genotype", "DARTS_V2", "--checkpoint", str(tmp_path / "checkpoint.pth.tar"),
                  "--dataset", "imagenet", "--data", str(tmp_path / "imagenet"), "--init-channels", "8",
                  "--layers", "3", "--threads", "1", "--device", "cpu"])
    assert "wrong shape" in capsys.readouterr().err
    # A pickled module (as the original train.py saves its model) loads only when allowed.
    torch.save(original, tmp_path / "model.pt")
    command = ["eval", "darts", "--genotype", "PDARTS", "--checkpoint", str(tmp_path / "model.pt"), "--dataset",
               "imagenet", "--data", str(tmp_path / "imagenet"), "--init-channels", "8", "--layers", "3",
               "--threads", "1", "--device", "cpu"]
    with pytest.raises(SystemExit):
        cli.main(command)
    assert "add --allow-pickle" in capsys.readouterr().err
    assert cli.main(command + ["--allow-pickle"]) == 0
    assert f"top-1 {top1:.4f}, top-5 {top5:.4f} (6 images)" in capsys.readouterr().out


def test_imagenet_training_batches_are_augmented_reproducibly(tmp_path):
    from fastdnas.data import iterate_batches, load_dataset

    write_image_folder(tmp_path, split="train")
    write_image_folder(tmp_path, split="val")
    data = load_dataset("imagenet", root=str(tmp_path))
    assert (data.num_classes, len(data.train), len(data.test)) == (3, 6, 6) and data.train.augments
    assert "imagenet: 3 classes, 3x224x224, train 6, test 6" == data.summary()
    draws = [next(iterate_batches(data.train, 4, torch.Generator().manual_seed(seed), shuffle=True))[0]
             for seed in (5, 5, 6)]
    assert draws[0].shape == (4, 3, 224, 224) and torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    plain, _ = next(iterate_batches(data.test, 6))
    again, _ = next(iterate_batches(data.test, 6))
    assert torch.equal(plain, again)  # evaluation: resize and centre crop only


def test_cli_retrains_on_imagenet_with_the_mobile_network(tmp_path, capsys):
    write_image_folder(tmp_path / "imagenet", split="train")
    write_image_folder(tmp_path / "imagenet", split="val")
    assert cli.main(["train", "darts", "--dataset", "imagenet", "--data", str(tmp_path / "imagenet"), "--genotype",
                     "DARTS_V2", "--epochs", "1", "--batch-size", "3", "--init-channels", "8", "--layers", "3",
                     "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert "stem0.0.weight" in state and "auxiliary_head.classifier.weight" in state
    assert "auxiliary_head.features.6.weight" not in state  # no BatchNorm after the head's 2x2 convolution
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert 0.0 <= result["test_acc"] <= 1.0 and result["settings"]["weight_decay"] == 3e-5
