"""The entry points: main (fastdnas, python -m fastdnas) and same_run (scripts/search.sh)."""
import difflib
import os
import signal
import sys
import threading

from .common import Terminated, UsageError, raise_terminated, resolve_settings
from .defaults import SETTINGS
from .parser import build_parser, every_flag, own_flags
from .resume import changed_settings


def same_run(argv):
    """For scripts/search.sh: 0 when `fastdnas ARGV --resume` would continue the run saved in its
    --out folder, 1 (saying why) when that run has other settings. 0 too when the command line or
    the checkpoint is bad: the search itself then says what is wrong."""
    import contextlib
    import io
    import warnings

    from ..search import CheckpointError, load_checkpoint

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(argv)
        settings, given = resolve_settings(args, *SETTINGS[args.command, args.space])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = load_checkpoint(os.path.join(settings["out"], "checkpoint.pt"), allow_unverified=True)["extra"]
        changed = changed_settings(saved["settings"], given)
    except (SystemExit, UsageError, OSError, CheckpointError, TypeError, KeyError):
        return 0
    if changed:
        print(f"{settings['out']} holds a search with other settings: {changed}")
    return 1 if changed else 0


def main(argv=None):
    from ..search import distributed

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        prog, lists = f"fastdnas {args.command} {args.space}", f"fastdnas {args.command} {args.space} --help lists its flags"
        foreign = [arg for arg in unknown if arg.split("=")[0] in every_flag()]
        if foreign:
            parser.exit(2, f"{prog}: error: {foreign[0].split('=')[0]} does not apply to `{args.command} "
                           f"{args.space}` ({lists})\n")
        names = [arg.split("=")[0] for arg in unknown if arg.startswith("-")]
        close = difflib.get_close_matches(names[0], own_flags(args.command, args.space), n=1) if names else []
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(unknown)} "
                       f"({f'did you mean {close[0]}? ' if close else ''}{lists})\n")
    # Progress and epoch lines reach a log file (a cluster job's output) as they are printed.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    # SIGTERM stops a run as Ctrl-C does (same message, the checkpoint kept), with its own exit status.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if on_main_thread else None
    try:
        return args.run(args)
    except UsageError as error:
        parser.exit(2, f"fastdnas {args.command} {args.space}: error: {error}\n")
    except KeyboardInterrupt as interrupt:
        # Checkpoints are written atomically after each epoch: the last one stays valid.
        again = getattr(interrupt, "resume_note", " (add --resume to continue it)" if args.command == "search" else "")
        stopped = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        sys.stderr.write(f"\nfastdnas {args.command} {args.space}: {stopped}{again}\n")
        return 128 + int(signal.SIGTERM) if isinstance(interrupt, Terminated) else 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        distributed.shutdown()
