"""``python -m cunet.kernels check [--arch sm_80 ...] [--json]``: the NVRTC compile and resource check.

Compiles every kernel module the op code declares, with the runtime's exact options and
defines, for each architecture; prints registers, shared memory, spill bytes and
theoretical occupancy per kernel. Exits 1 on any compile error or any spill.

``python -m cunet.kernels list`` prints the modules and kernels without compiling.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import registered_modules
from .check import ARCHS, KernelCompileError, check_module, format_table


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m cunet.kernels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="compile every kernel with NVRTC for each architecture")
    check.add_argument("--arch", action="append", choices=ARCHS, help="architecture (repeatable); default: all")
    check.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    sub.add_parser("list", help="list kernel modules and their kernels")
    args = parser.parse_args(argv)

    modules = registered_modules()
    if args.command == "list":
        for module in modules:
            print(f"{module.label():<48} threads={module.threads:<4} {' '.join(module.kernel_names())}")
        return 0

    rows, errors = [], []
    for arch in args.arch or ARCHS:
        for module in modules:
            if not module.builds_for(arch):
                continue  # a tensor-core module on an architecture without them
            try:
                rows.extend(check_module(module, arch))
            except KernelCompileError as exc:
                errors.append(str(exc))
    spills = [r for r in rows if r.spill_store_bytes or r.spill_load_bytes]
    if args.json:
        print(json.dumps({"rows": [r.as_dict() for r in rows], "errors": errors}, indent=1))
    else:
        print(format_table(rows))
        print(f"\n{len(rows)} kernel builds, {len(errors)} compile errors, {len(spills)} with spills")
    for message in errors:
        print(message, file=sys.stderr)
    for r in spills:
        print(f"spill: {r.kernel} ({r.module}) on {r.arch}: {r.spill_store_bytes} B stored, "
              f"{r.spill_load_bytes} B loaded", file=sys.stderr)
    return 1 if errors or spills else 0


if __name__ == "__main__":
    sys.exit(main())
