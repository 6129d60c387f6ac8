"""The command line: ``python -m fusedlstm`` and the ``fusedlstm`` console script.

    fusedlstm [check] [-v] [--isa ISA] [--no-bench]   self-check + a short benchmark (the default)
    fusedlstm bench [--quick | --shapes T,B,H ...] [--csv F] [--json F] [--plot F.png]
    fusedlstm info [--peak]                           machine, build, peers
    fusedlstm --version

Subcommands live one per module (check.py, bench.py, info.py); this module
holds the parser and the argument types they share. Argument errors are
argparse's: one line on stderr, exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

SUBCOMMANDS = ("check", "bench", "info")


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be a positive integer")
    return v


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{s!r} must be a positive number")
    return v


def isa_name(s: str) -> str:
    """An ISA of fusedlstm.available_isas() on this CPU."""
    import fusedlstm
    from .. import _bench
    isas = _bench.isa_list(fusedlstm)
    if s not in isas:
        raise argparse.ArgumentTypeError(f"{s!r} is not a SIMD path of this CPU (available: {', '.join(isas)})")
    return s


def _version() -> str:
    from .. import __version__
    return __version__


def build_parser(prog="fusedlstm") -> argparse.ArgumentParser:
    from . import bench, check, info
    p = argparse.ArgumentParser(
        prog=prog,
        description="fusedlstm: self-check, benchmarks and machine information. "
                    "With no subcommand: `check` (its options work without the word).")
    p.add_argument("--version", action="version", version=f"fusedlstm {_version()}")
    sub = p.add_subparsers(dest="command", metavar="{check,bench,info}")
    c = sub.add_parser("check", help="self-check against the float64 reference, then a short benchmark (default)",
                       description=check.__doc__.split("\n\n")[0].replace("``", "`"))
    check.add_arguments(c, positive_int, isa_name)
    b = sub.add_parser("bench", help="benchmark fusedlstm against torch, onnxruntime, OpenVINO, cuDNN",
                       description=bench.DESCRIPTION, epilog=bench.EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b, positive_int, positive_float, isa_name)
    i = sub.add_parser("info", help="the machine, the build and the peers' versions",
                       description=info.__doc__.split("\n\n")[0].replace("``", "`"))
    info.add_arguments(i, positive_int)
    return p


def main(argv=None, prog=None) -> int:
    """Entry point of ``python -m fusedlstm`` and the ``fusedlstm`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # no subcommand: the self-check, with its options (python -m fusedlstm --no-bench, as before)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["check"] + argv
    p = build_parser(prog or ("python -m fusedlstm" if _run_as_module() else "fusedlstm"))
    args = p.parse_args(argv)
    from . import bench, check, info
    try:
        return {"check": check.run, "bench": bench.run, "info": info.run}[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run_as_module() -> bool:
    return bool(sys.argv) and sys.argv[0].endswith("__main__.py")
