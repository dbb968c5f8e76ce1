"""`fastdnas search autodeeplab` and `fastdnas train autodeeplab` end to end on tiny generated shapes."""
import json
from functools import partial

import pytest
import torch

import fastdnas.data
from fastdnas import cli
from fastdnas.autodeeplab import DecodedNetwork, load_arch
from fastdnas.search import Search, load_checkpoint

TINY = ["--layers", "2", "--blocks", "2", "--filter-multiplier", "2", "--batch-size", "4", "--device", "cpu",
        "--threads", "1"]


@pytest.fixture(autouse=True)
def tiny_shapes(monkeypatch):
    """32 x 32 shapes, 8 + 8 images to search on, 4 to validate: a search epoch takes about a second."""
    monkeypatch.setattr(fastdnas.data, "load_shapes", partial(fastdnas.data.load_shapes, train_size=16, val_size=4,
                                                              size=32, radius=(4.0, 8.0), period=(3.0, 5.0)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def search(out, *flags):
    return cli.main(["search", "autodeeplab", *TINY, "--out", str(out), *flags])


def read_log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_search_writes_every_output(tmp_path):
    assert search(tmp_path, "--epochs", "2", "--arch-start-epoch", "1") == 0
    for name in ("arch.json", "trellis.png", "cell.png", "alphas.png", "log.jsonl", "checkpoint.pt", "settings.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    arch = load_arch(tmp_path / "arch.json")
    assert len(arch["path"]) == 2 and len(arch["cell"]) == 4
    records = read_log(tmp_path)
    assert [r["arch_updates"] for r in records] == [False, True]
    for record in records:
        assert {"train_loss", "train_miou", "val_loss", "val_acc", "val_miou", "val_iou", "path", "cell"} <= set(record)
        assert 0 <= record["val_miou"] <= 1 and len(record["val_iou"]) == 4
    assert records[-1]["path"] == arch["path"]
    assert [tuple(pair) for pair in records[-1]["cell"]] == arch["cell"]
    # The architecture moved only once updates started (SPEC: alphas and betas fixed before).
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    first, last = checkpoint["history"]["alphas"]
    assert all(not torch.equal(a, b) for a, b in zip(first, last))
    saved = checkpoint["extra"]["settings"]
    assert saved["arch_betas"] == [0.9, 0.999] and saved["arch_lr"] == 3e-3 and saved["unrolled"] is False
    assert checkpoint["arch_optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert len(checkpoint["arch_optimizer"]["param_groups"][0]["params"]) == 2  # alphas and betas


def test_second_order_search_runs(tmp_path):
    assert search(tmp_path, "--epochs", "1", "--arch-start-epoch", "0", "--unrolled") == 0
    assert load_checkpoint(tmp_path / "checkpoint.pt")["extra"]["settings"]["unrolled"] is True


def test_resumed_search_equals_uninterrupted(tmp_path, monkeypatch):
    import fastdnas.viz

    for plot in ("plot_trellis", "plot_cell", "plot_alpha_history"):  # pictures are tested above
        monkeypatch.setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)
    flags = ["--epochs", "2", "--arch-start-epoch", "0"]  # the Adam state exists when the run is cut
    assert search(tmp_path / "straight", *flags) == 0

    original_run = Search.run
    monkeypatch.setattr(Search, "run", lambda self, until=None: original_run(self, until=1))  # "killed" after epoch 1
    assert search(tmp_path / "resumed", *flags) == 0
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(Search, "run", original_run)
    assert search(tmp_path / "resumed", *flags, "--resume") == 0

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert resumed["epoch"] == 2
    for a, b in zip(straight["arch_parameters"], resumed["arch_parameters"], strict=True):
        assert torch.equal(a, b)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert (tmp_path / "straight" / "arch.json").read_text() == (tmp_path / "resumed" / "arch.json").read_text()
    strip = lambda records: [{k: v for k, v in r.items() if k != "time"} for r in records]  # noqa: E731
    assert strip(read_log(tmp_path / "straight")) == strip(read_log(tmp_path / "resumed"))


def test_train_from_arch(tmp_path):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps({"path": [0, 1, 1], "cell": [["sep_conv_3x3", 1], ["skip_connect", 0],
                                                                  ["dil_conv_3x3", 2], ["max_pool_3x3", 1]]}))
    out = tmp_path / "train"
    code = cli.main(["train", "autodeeplab", "--arch", str(arch_file), "--filter-multiplier", "2", "--epochs", "2",
                     "--batch-size", "4", "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert 0 <= result["val_miou"] <= 1 and 0 <= result["val_acc"] <= 1 and result["epochs"] == 2
    assert list(result["val_iou_per_class"]) == ["background", "circle", "square", "triangle"]
    assert list(result["val_iou_per_class"].values()) == result["val_iou"]
    assert result["arch"]["path"] == [0, 1, 1] and result["parameters"] > 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    state = torch.load(out / "model.pt", weights_only=True)
    model = DecodedNetwork(4, [0, 1, 1], load_arch(arch_file)["cell"], filter_multiplier=2, blocks=2)
    model.load_state_dict(state)


def test_search_then_train(tmp_path):
    assert search(tmp_path / "search", "--epochs", "1") == 0
    assert cli.main(["train", "autodeeplab", "--arch", str(tmp_path / "search" / "arch.json"), "--filter-multiplier",
                     "2", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--out",
                     str(tmp_path / "train")]) == 0
    assert json.loads((tmp_path / "train" / "result.json").read_text())["arch"] == json.loads(
        (tmp_path / "search" / "arch.json").read_text())


def test_spec_defaults():
    args = cli.build_parser().parse_args(["search", "autodeeplab", "--dataset", "cityscapes"])
    settings, _ = cli.resolve_settings(args, *cli.SETTINGS["search", "autodeeplab"])
    expected = {"lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 3e-4, "arch_lr": 3e-3,
                "arch_weight_decay": 1e-3, "arch_betas": [0.9, 0.999], "unrolled": False, "epochs": 40,
                "arch_start_epoch": 20, "batch_size": 2, "layers": 12, "blocks": 5, "filter_multiplier": 8}
    assert {k: settings[k] for k in expected} == expected
    assert settings["out"].endswith("search-autodeeplab-cityscapes")
    args = cli.build_parser().parse_args(["search", "autodeeplab"])
    settings, _ = cli.resolve_settings(args, *cli.SETTINGS["search", "autodeeplab"])
    assert settings["dataset"] == "shapes" and settings["arch_start_epoch"] < settings["epochs"]


def fails(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    # Each space's parser knows only its own datasets; a config file naming another is refused too.
    fails(capsys, ["search", "autodeeplab", "--dataset", "digits"], "invalid choice: 'digits'")
    fails(capsys, ["search", "darts", "--dataset", "shapes"], "invalid choice: 'shapes'")
    (tmp_path / "digits.json").write_text(json.dumps({"dataset": "digits"}))
    fails(capsys, ["search", "autodeeplab", "--config", str(tmp_path / "digits.json")],
          "does not suit `search autodeeplab`")
    (tmp_path / "text.json").write_text("path: [0, 1]\n")
    fails(capsys, ["train", "autodeeplab", "--arch", str(tmp_path / "text.json")], "not an architecture file")
    fails(capsys, ["search", "autodeeplab", "--init-channels", "4"], "--init-channels does not apply")
    fails(capsys, ["train", "autodeeplab", "--genotype", "g.json"], "--genotype does not apply")
    fails(capsys, ["train", "autodeeplab", "--layers", "3"], "--layers does not apply")
    fails(capsys, ["train", "autodeeplab"], "needs --arch")
    fails(capsys, ["train", "autodeeplab", "--arch", str(tmp_path / "missing.json")], "cannot read")
    (tmp_path / "bad.json").write_text(json.dumps({"path": [0, 2], "cell": [["sep_conv_3x3", 0], ["none", 1]]}))
    fails(capsys, ["train", "autodeeplab", "--arch", str(tmp_path / "bad.json")], "jumps from level 0 to 2")
    fails(capsys, ["search", "autodeeplab", *TINY, "--batch-size", "1", "--out", str(tmp_path / "a")],
          "--batch-size must be >= 2")
    fails(capsys, ["search", "autodeeplab", *TINY, "--blocks", "0", "--out", str(tmp_path / "a")],
          "--blocks must be >= 1")
    fails(capsys, ["search", "autodeeplab", "--dataset", "cityscapes", "--data", str(tmp_path), "--out",
                   str(tmp_path / "c")], "leftImg8bit/ and gtFine/")
