"""The command line end to end on a tiny synthetic search and retraining."""
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from fastdnas import cli
from fastdnas.cli import common as cli_common
from fastdnas.darts import DARTS_V2, genotype_from_text, genotype_to_dict, load_genotype
from fastdnas.search import Search, load_checkpoint, save_checkpoint
from fastdnas.search.loop import CHECKPOINT_KEYS

TINY = ["--dataset", "synthetic", "--init-channels", "2", "--layers", "2", "--batch-size", "32", "--device", "cpu",
        "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def search(out, *flags):
    return cli.main(["search", "darts", *TINY, "--out", str(out), *flags])


def test_search_writes_every_output(tmp_path):
    assert search(tmp_path, "--epochs", "1", "--unrolled") == 0
    for name in ("genotype.json", "genotype.txt", "normal.png", "reduce.png", "alphas.png", "log.jsonl",
                 "checkpoint.pt", "settings.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    genotype = load_genotype(tmp_path / "genotype.json")
    assert genotype_to_dict(genotype_from_text((tmp_path / "genotype.txt").read_text())) == genotype_to_dict(genotype)
    assert (tmp_path / "genotype.txt").read_text().startswith("Genotype(normal=[(")
    (record,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "time", "genotype"} <= set(record)
    assert record["genotype"] == genotype_to_dict(genotype)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["extra"]["settings"]["unrolled"] is True


def test_resumed_search_equals_uninterrupted(tmp_path, monkeypatch):
    import fastdnas.viz

    for plot in ("plot_genotype", "plot_alpha_history"):  # pictures are tested above; they take seconds
        monkeypatch.setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)
    assert search(tmp_path / "straight", "--epochs", "2") == 0

    original_run = Search.run
    monkeypatch.setattr(Search, "run", lambda self, until=None: original_run(self, until=1))  # "killed" after epoch 1
    assert search(tmp_path / "resumed", "--epochs", "2") == 0
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(Search, "run", original_run)
    assert search(tmp_path / "resumed", "--epochs", "2", "--resume") == 0

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert resumed["epoch"] == 2
    for a, b in zip(straight["arch_parameters"], resumed["arch_parameters"]):
        assert torch.equal(a, b)
    assert (tmp_path / "straight" / "genotype.json").read_text() == (tmp_path / "resumed" / "genotype.json").read_text()


def test_train_from_genotype(tmp_path):
    genotype_file = tmp_path / "genotype.txt"
    genotype_file.write_text(repr(DARTS_V2) + "\n")
    out = tmp_path / "train"
    code = cli.main(["train", "darts", "--genotype", str(genotype_file), *TINY, "--epochs", "1", "--auxiliary",
                     "--drop-path-prob", "0.2", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert 0 <= result["test_acc"] <= 1 and result["epochs"] == 1 and result["parameters"] > 0
    assert result["genotype"]["normal"][0] == list(DARTS_V2.normal[0])
    assert (out / "model.pt").stat().st_size > 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 1


def test_settings_precedence(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 3, "layers": 4, "arch-lr": 0.01}))
    args = cli.build_parser().parse_args(["search", "darts", "--config", str(config), "--epochs", "5"])
    settings, given = cli.resolve_settings(args, cli.SEARCH_DEFAULTS, cli.SEARCH_DATASET_DEFAULTS)
    assert settings["epochs"] == 5 and settings["layers"] == 4 and settings["arch_lr"] == 0.01
    assert settings["dataset"] == "digits" and settings["init_channels"] == 8  # digits-sized default
    assert settings["lr"] == 0.025 and settings["out"].endswith("search-darts-digits")
    assert set(given) == {"config", "epochs"}
    args = cli.build_parser().parse_args(["search", "darts", "--dataset", "cifar10"])
    settings, _ = cli.resolve_settings(args, cli.SEARCH_DEFAULTS, cli.SEARCH_DATASET_DEFAULTS)
    assert (settings["epochs"], settings["batch_size"], settings["init_channels"], settings["layers"]) == (50, 64, 16, 8)
    assert settings["arch_lr"] == 3e-4 and settings["lr_min"] == 0.001


def fails(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    fails(capsys, ["search", "darts", "--dataset", "mnist"], "invalid choice")
    fails(capsys, ["search", "nas"], "invalid choice")
    fails(capsys, ["train", "darts", "--dataset", "synthetic"], "needs --genotype")
    fails(capsys, ["train", "darts", "--genotype", str(tmp_path / "missing.json")], "cannot read")
    (tmp_path / "bad.json").write_text('{"normal": 1}')
    fails(capsys, ["train", "darts", "--genotype", str(tmp_path / "bad.json")], "genotype")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 3, "layer": 4}))
    fails(capsys, ["search", "darts", "--config", str(config)], "unknown setting(s) ['layer']")
    fails(capsys, ["search", "darts", "--config", str(tmp_path / "nope.json")], "cannot read")
    fails(capsys, ["search", "darts", *TINY, "--epochs", "0", "--out", str(tmp_path / "a")], "--epochs must be >= 1")
    fails(capsys, ["search", "darts", *TINY, "--lr-min", "1", "--out", str(tmp_path / "a")], "lr_min")
    fails(capsys, ["search", "darts", "--dataset", "cifar10", "--data", str(tmp_path), "--out", str(tmp_path / "c")],
          "cifar-10-batches-py")
    fails(capsys, ["search", "darts", "--out", str(tmp_path / "none"), "--resume"], "nothing to resume")


def test_resume_refuses_changed_settings(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    settings = {"dataset": "synthetic", "layers": 2, "epochs": 1}
    save_checkpoint({**dict.fromkeys(CHECKPOINT_KEYS), "extra": {"settings": settings}}, out / "checkpoint.pt")
    fails(capsys, ["search", "darts", "--dataset", "synthetic", "--out", str(out)], "add --resume")
    fails(capsys, ["search", "darts", "--dataset", "synthetic", "--layers", "3", "--out", str(out), "--resume"],
          "layers (saved 2, given 3)")


def test_search_sh_resumes_its_own_run_and_gives_other_settings_a_new_folder(tmp_path):
    # scripts/search.sh in a copy of the repository whose setup does nothing and whose `fastdnas`
    # records its command lines; .venv/bin/python is this Python, importing this fastdnas.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(repo, "scripts", "search.sh"), root / "scripts")
    (root / "scripts" / "setup.sh").write_text("")
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f'#!/bin/sh\nPYTHONPATH="{repo}" exec "{sys.executable}" "$@"\n')
    (venv / "fastdnas").write_text('#!/bin/sh\necho "$@" >> calls.txt\n')
    for name in ("python", "fastdnas"):
        (venv / name).chmod(0o755)

    def saved_search(out, *flags):  # what `fastdnas search` leaves in OUT
        args = cli.build_parser().parse_args(["search", "darts", "--dataset", "digits", "--out", out, *flags])
        settings, _ = cli.resolve_settings(args, cli.SEARCH_DEFAULTS, cli.SEARCH_DATASET_DEFAULTS)
        save_checkpoint({**dict.fromkeys(CHECKPOINT_KEYS), "extra": {"settings": settings}},
                        root / out / "checkpoint.pt")

    def search_sh(*args):
        result = subprocess.run(["bash", "scripts/search.sh", *args], cwd=root, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        calls = (root / "calls.txt").read_text().splitlines()
        (root / "calls.txt").unlink()
        return result.stdout, calls

    saved_search("runs/digits")  # a default run
    readme_example = ("--search", "--epochs", "4", "--train", "--epochs", "10")
    stdout, calls = search_sh(*readme_example)
    assert "runs/digits holds a search with other settings: epochs (saved 12, given 4)" in stdout
    assert "a new search in runs/digits-2" in stdout
    assert calls == ["search darts --dataset digits --out runs/digits-2 --epochs 4",
                     "train darts --dataset digits --genotype runs/digits-2/genotype.json --out runs/digits-2/retrain "
                     "--epochs 10"]
    saved_search("runs/digits-2", "--epochs", "4")  # ... interrupted: the same command continues it
    assert search_sh(*readme_example)[1][0] == "search darts --dataset digits --out runs/digits-2 --resume --epochs 4"
    assert search_sh()[1][0] == "search darts --dataset digits --out runs/digits --resume"


def help_text(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width


def test_help_shows_each_space_its_own_flags_datasets_and_defaults(capsys):
    top = help_text(capsys)
    assert "``" not in top and "search" in top and "train" in top
    darts, adl = help_text(capsys, "search", "darts"), help_text(capsys, "search", "autodeeplab")
    assert darts != adl
    assert "--init-channels" in darts and "--blocks" not in darts and "--filter-multiplier" not in darts
    assert "--blocks" in adl and "--filter-multiplier" in adl and "--init-channels" not in adl
    assert "{cifar10,cifar100,digits,synthetic}" in darts and "shapes" not in darts
    assert "{cityscapes,voc,shapes}" in adl and "digits" not in adl
    epochs = cli.SEARCH_DATASET_DEFAULTS["digits"]["epochs"], cli.AUTODEEPLAB_SEARCH_DATASET_DEFAULTS["shapes"]["epochs"]
    assert f"default: {epochs[0]} on digits" in darts and f"default: {epochs[1]} on shapes" in adl
    assert "0.5 0.999" in darts and "0.9 0.999" in adl  # the arch optimizer betas of each space
    train_darts, train_adl = help_text(capsys, "train", "darts"), help_text(capsys, "train", "autodeeplab")
    assert "--genotype" in train_darts and "--arch " not in train_darts and "--arch FILE" in train_adl
    assert all("--threads" in text for text in (darts, adl, train_darts, train_adl))


def test_help_and_start_line_give_each_method_its_own_settings(tmp_path, capsys, monkeypatch, no_plots):
    darts = help_text(capsys, "search", "darts")
    for text in ("channels C of the first cells (default: 8 on digits, 16 on cifar10 and cifar100, 4 on synthetic; "
                 "--method pc-darts: 16 on digits; --method drnas: 16 on digits, 36 on cifar10 and cifar100, 8 on "
                 "synthetic; --method gdas --gdas-variant authors: 16 on cifar10 and cifar100)",
                 "(default: 0.003 on digits and synthetic, 0.0003 on cifar10 and cifar100; --method pc-darts: 0.006 on "
                 "digits, 0.0006 on cifar10 and cifar100; --method drnas: 0.006 on digits, 0.0006 on cifar10 and "
                 "cifar100; --method fair-darts: 0.03 on digits, 0.003 on cifar10 and cifar100)",
                 "no architecture updates in the first N epochs (default: 0; --method pc-darts: 4 on digits, 15 on "
                 "cifar10 and cifar100; --method drnas: 2 on digits, 10 on cifar10 and cifar100)",
                 "--epochs EPOCHS default: 12 on digits, 50 on cifar10 and cifar100, 2 on synthetic; --method gdas: 240 "
                 "on cifar10 and cifar100"):
        assert text in darts, text
    monkeypatch.setattr(Search, "run", lambda self, until=None: self.history)  # the start lines only
    assert search(tmp_path / "pc", "--method", "pc-darts", "--init-channels", "4", "--epochs", "2",
                  "--arch-start-epoch", "1") == 0
    assert ("search darts (method pc-darts: K=4, C=4, 2 cells, 2 epochs, arch lr 0.003, architecture updates from "
            "epoch 2/2) on synthetic") in capsys.readouterr().out
    assert search(tmp_path / "gdas", "--method", "gdas", "--epochs", "2") == 0
    out = capsys.readouterr().out
    assert "search darts (method gdas: tau 10.0 -> 0.1, C=2, 2 cells, 2 epochs, arch lr 0.003" in out
    assert "(gdas: each of the 4 steps trains one sampled operation per edge" in out
    assert "accuracy can stay near chance to the end" in out


def test_flag_of_another_space_is_refused_by_name(capsys):
    fails(capsys, ["search", "darts", "--blocks", "3"], "--blocks does not apply to `search darts`")
    fails(capsys, ["search", "darts", "--no-such-flag"], "unrecognized arguments: --no-such-flag")


def test_flag_typos_are_named_with_a_suggestion_in_one_line(capsys):
    for argv, message in (
            (["search", "darts", "--epcohs", "3"], "unrecognized arguments: --epcohs 3 (did you mean --epochs?"),
            (["search", "darts", "--epoch", "3"], "unrecognized arguments: --epoch 3 (did you mean --epochs?"),
            (["search", "darts", "--no-unroled"], "did you mean --no-unrolled?"),
            (["train", "darts", "--init-channel=4"], "did you mean --init-channels?"),
            (["search", "darts", "--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'")):
        fails(capsys, argv, message)
        with pytest.raises(SystemExit):
            cli.main(argv)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "usage:" not in err, err
    # No flag is taken by a prefix of its name, on any parser.
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["search", "darts", "--epoch", "3"])


def test_ctrl_c_says_how_to_resume_and_leaves_a_valid_checkpoint(tmp_path, capsys, monkeypatch):
    import fastdnas.viz

    for plot in ("plot_genotype", "plot_alpha_history"):
        monkeypatch.setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)
    renames = []
    original_replace = os.replace

    def interrupted_replace(source, target):  # Ctrl-C as the second epoch's checkpoint is put in place
        if str(target).endswith("checkpoint.pt"):
            renames.append(target)
            if len(renames) == 2:
                raise KeyboardInterrupt
        return original_replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    out = tmp_path / "run"
    assert search(out, "--epochs", "3") == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # the last complete epoch, still loadable
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.setattr(os, "replace", original_replace)
    assert search(out, "--epochs", "3", "--resume") == 0
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 3


class StopAfterLine:
    """sys.stdout that stops the run (``stop()``) right after printing a line that starts with ``prefix``."""

    def __init__(self, stream, prefix, stop):
        self.stream, self.prefix, self.stop = stream, prefix, stop

    def write(self, text):
        self.stream.write(text)
        if text.startswith(self.prefix):
            self.stop()

    def flush(self):
        self.stream.flush()


def test_ctrl_c_after_an_epoch_line_keeps_that_epoch(tmp_path, capsys, monkeypatch, no_plots):
    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdout", StopAfterLine(__import__("sys").stdout, "epoch 2/3", interrupt))
    out = tmp_path / "run"
    assert search(out, "--epochs", "3") == 130
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2  # saved before its line was printed
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    err = capsys.readouterr().err
    assert f"interrupted (add --resume to continue after epoch 2/3, the last one saved in {out / 'checkpoint.pt'})" in err


def test_sigterm_stops_like_ctrl_c_and_restores_the_handler(tmp_path, capsys, monkeypatch, no_plots):
    import signal

    def previous(signum, frame):
        raise AssertionError("the CLI's own handler must be in place during the run")

    monkeypatch.setattr("sys.stdout", StopAfterLine(__import__("sys").stdout, "epoch 1/2",
                                                    lambda: os.kill(os.getpid(), signal.SIGTERM)))
    original = signal.signal(signal.SIGTERM, previous)
    try:
        out = tmp_path / "run"
        assert search(out, "--epochs", "2") == 143
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "terminated (SIGTERM) (add --resume to continue after epoch 1/2" in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_ctrl_c_in_training_exits_130(tmp_path, capsys, monkeypatch):
    import fastdnas.train

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastdnas.train, "train_network", interrupt)
    genotype_file = tmp_path / "genotype.txt"
    genotype_file.write_text(repr(DARTS_V2) + "\n")
    assert cli.main(["train", "darts", "--genotype", str(genotype_file), *TINY, "--out", str(tmp_path / "t")]) == 130
    assert "fastdnas train darts: interrupted" in capsys.readouterr().err


def test_a_file_that_is_not_a_genotype_says_so(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# fastdnas\n\nFast differentiable neural architecture search.\n")
    fails(capsys, ["train", "darts", "--genotype", str(readme), *TINY], "README.md': not a genotype file")
    with pytest.raises(SystemExit):
        cli.main(["train", "darts", "--genotype", str(readme), *TINY])
    err = capsys.readouterr().err
    assert "README.md" in err and "genotype.json" in err and "genotype.txt" in err


def test_progress_lines_without_a_terminal(tmp_path, capsys, monkeypatch):
    import fastdnas.viz

    for plot in ("plot_genotype", "plot_alpha_history"):
        monkeypatch.setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)
    assert not __import__("sys").stderr.isatty()  # pytest captures it: as in a log file
    assert search(tmp_path / "s", "--epochs", "1", "--log-interval", "1") == 0
    out = capsys.readouterr().out
    steps = 128 // 2 // 32  # synthetic search-train half over the batch
    assert [line.split(":")[0] for line in out.splitlines() if " step " in line] == [
        f"  epoch 1/1 step {k}/{steps}" for k in range(1, steps)]  # the last step is the epoch line's
    # A short first epoch leaves BatchNorm running statistics near their start: the log says why val lags.
    assert "val: eval mode, BatchNorm running statistics" in out


def test_progress_line_every_few_seconds(monkeypatch):
    from fastdnas.search.loop import Metrics, Progress

    lines = []
    meter = Metrics("cpu")
    meter.update(torch.tensor(1.5), torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    progress = Progress("lines", 5, "epoch 1/1", log_interval=100, lr=0.1, log=lines.append, seconds=0.0)
    for step in range(5):
        progress.update(step, meter)
    assert lines == [f"  epoch 1/1 step {k}/5: loss 1.5000 acc 1.0000 (0 s)" for k in range(1, 5)]
    quiet = Progress("lines", 5, "epoch 1/1", log_interval=100, lr=0.1, log=lines.append, seconds=3600.0)
    for step in range(5):
        quiet.update(step, meter)
    assert len(lines) == 4


def test_default_threads_leave_a_loaded_machine_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    for cores, load, want in [(1, 0.0, 1), (2, 0.0, 1), (2, 3.0, 1), (8, 0.0, 8), (8, 3.2, 5), (8, 20.0, 1),
                              (16, 0.0, 8)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert cli.default_threads() == want, (cores, load)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cli.default_threads() == 8  # torch read OMP_NUM_THREADS itself: kept


def test_train_and_search_set_the_thread_count(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_common, "default_threads", lambda: 1)  # what pick_device calls
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cli.pick_device("cpu") == "cpu" and torch.get_num_threads() == 1
        assert cli.pick_device("cpu", 2) == "cpu" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    args = cli.build_parser().parse_args(["train", "darts", "--threads", "3"])
    assert args.threads == 3
    args = cli.build_parser().parse_args(["train", "autodeeplab", "--threads", "3"])
    assert args.threads == 3


def test_resume_from_a_damaged_checkpoint_fails_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert search(out, "--epochs", "1") == 0
    path = out / "checkpoint.pt"
    data = path.read_bytes()
    (out / ".checkpoint-killed.tmp").write_bytes(data[:100])  # a write killed before its rename
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    state = load_checkpoint(path)
    del state["rng"]
    save_checkpoint(state, tmp_path / "no-rng.pt")
    for content, reason in ((b"", "empty file"), (data[:-200], "damaged or not a checkpoint"),
                            (b"not a checkpoint\n" * 10, "damaged or not a checkpoint"),
                            (bytes(flipped), "does not match its checksum"),
                            ((tmp_path / "no-rng.pt").read_bytes(), "lacks rng")):
        path.write_bytes(content)
        with pytest.raises(SystemExit) as exit_info:
            search(out, "--epochs", "1", "--resume")
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert str(path) in err and reason in err and "run without --resume to start over" in err, err
    assert not (out / ".checkpoint-killed.tmp").exists()


def refused(capsys, out, *flags):
    """The one-line error of `search --resume` in ``out`` (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        search(out, "--epochs", "1", "--resume", *flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "--resume cannot continue" in err, err
    return err


def test_resume_refuses_an_unverified_checkpoint_unless_asked(tmp_path, capsys, no_plots):
    out = tmp_path / "run"
    assert search(out, "--epochs", "1") == 0
    path = out / "checkpoint.pt"
    data = path.read_bytes()
    # 64 bytes flipped in the middle of the largest tensor (stored uncompressed after its 30-byte local
    # header, its name and its extra field), then the last byte cut: a weight changed, the checksum lost.
    tensors = [info for info in zipfile.ZipFile(io.BytesIO(data)).infolist() if "/data/" in info.filename]
    largest = max(tensors, key=lambda info: info.file_size)
    offset = largest.header_offset
    name_size, extra_size = (int.from_bytes(data[offset + i:offset + i + 2], "little") for i in (26, 28))
    middle = offset + 30 + name_size + extra_size + largest.file_size // 2 - 32
    flipped = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]
    no_checksum = tmp_path / "no-checksum.pt"
    torch.save(load_checkpoint(path), no_checksum)  # as an older fastdnas wrote it
    cut = "its checksum at the end of the file is damaged"
    cases = ((data[:-1], cut), (flipped[:-1], cut), (no_checksum.read_bytes(), "it has no checksum"))
    for content, reason in cases:
        path.write_bytes(content)
        err = refused(capsys, out)
        assert reason in err and "--allow-unverified-checkpoint" in err, err
    for content, reason in (cases[0], cases[2]):
        path.write_bytes(content)
        assert search(out, "--epochs", "1", "--resume", "--allow-unverified-checkpoint") == 0
        captured = capsys.readouterr()
        assert f"--allow-unverified-checkpoint: checkpoint {str(path)!r} cannot be verified ({reason}" in captured.err
        assert "resumed after epoch 1" in captured.out
    assert "allow_unverified_checkpoint" not in json.loads((out / "settings.json").read_text())
    fails(capsys, ["search", "darts", *TINY, "--out", str(tmp_path / "new"), "--allow-unverified-checkpoint"],
          "--allow-unverified-checkpoint applies with --resume only")


def test_resume_names_a_field_with_a_wrong_value(tmp_path, capsys, no_plots):
    out = tmp_path / "run"
    assert search(out, "--epochs", "1") == 0
    path = out / "checkpoint.pt"
    cases = [
        (lambda s: s.update(epoch="1"), "epoch must be an integer from 0 to 1, got str '1'"),
        (lambda s: s.update(epoch=7), "epoch must be an integer from 0 to 1, got int 7"),
        (lambda s: s["arch_parameters"].__setitem__(0, s["arch_parameters"][0][:, :3]),
         "arch_parameters[0] must be a tensor of shape [14, 8], got a tensor of shape [14, 3]"),
        (lambda s: s["model"].pop("alphas_normal"), "model must hold the state dict of this network; "
                                                    "'alphas_normal' is missing"),
        (lambda s: s["history"].pop("alphas"), "history must be a dict of the lists 'epochs' and 'alphas'"),
        (lambda s: s["weight_optimizer"]["param_groups"].append({"params": [0]}), "weight_optimizer must be"),
        (lambda s: s["rng"].pop("numpy"), "rng must be the random number generator states"),
        (lambda s: s.pop("epoch"), "lacks epoch"),
    ]
    os.replace(path, tmp_path / "good.pt")
    for change, message in cases:
        state = load_checkpoint(tmp_path / "good.pt")
        change(state)
        save_checkpoint(state, path)  # a valid checksum over the wrong values
        err = refused(capsys, out)
        assert f"checkpoint {str(path)!r}" in err and message in err, err


@pytest.mark.parametrize("kind", ["normal", "reduce"])
def test_cell_picture_labels_clear_of_each_other_and_the_nodes(tmp_path, monkeypatch, kind):
    from matplotlib.figure import Figure

    from fastdnas.darts import Genotype
    from fastdnas.viz import plot_cell

    # A searched digits genotype whose edges crowd around c_{k-1} and node 3, and DARTS_V2.
    found = Genotype(normal=[("skip_connect", 0), ("dil_conv_5x5", 1), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0),
                             ("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("dil_conv_5x5", 1), ("skip_connect", 3)],
                     normal_concat=[2, 3, 4, 5],
                     reduce=[("skip_connect", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2), ("sep_conv_5x5", 1),
                             ("sep_conv_5x5", 3), ("skip_connect", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0)],
                     reduce_concat=[2, 3, 4, 5])
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: figures.append(self))
    for genotype in (found, DARTS_V2):
        plot_cell(getattr(genotype, kind), [2, 3, 4, 5], tmp_path / "cell.png")
    for figure in figures:
        renderer = figure.canvas.get_renderer()
        texts = [t for t in figure.axes[0].texts if t.get_text()]  # not the arrows (empty annotations)
        labels = [t.get_window_extent(renderer) for t in texts if t.get_fontsize() == 7]
        nodes = [t.get_window_extent(renderer) for t in texts if t.get_fontsize() == 10]
        assert len(labels) == 8 and len(nodes) == 7
        for i, box in enumerate(labels):
            assert not any(box.overlaps(other) for other in labels[:i] + labels[i + 1:] + nodes)
