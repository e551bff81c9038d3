"""`python -m charlab.constitution import <paper file or folder> [--into DIR] [--prefix P] [--overwrite]`: the paper's
constitution files imported unchanged (`charlab.constitution_import`), one line per persona written."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from charlab.constitution_import import import_paper_constitutions
from charlab.errors import ConstitutionError
from charlab.settings import project_root


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m charlab.constitution import <paper file or folder> [--into DIR] [--prefix P] [--overwrite]`."""
    default_into = Path(os.environ.get("CHARACTER_CONSTITUTION_PATH") or project_root() / "constitutions")
    parser = argparse.ArgumentParser(prog="python -m charlab.constitution", description="Constitution files.")
    commands = parser.add_subparsers(dest="command", required=True)
    imports = commands.add_parser("import", help="import the paper's constitution files unchanged")
    imports.add_argument("path", type=Path, help="a paper file (few-shot/*.jsonl, hand-written/*.txt) or folder")
    imports.add_argument("--into", type=Path, default=default_into, help=f"target folder (default {default_into})")
    imports.add_argument("--prefix", default="paper-", help="persona name prefix (default 'paper-')")
    imports.add_argument("--overwrite", action="store_true", help="replace existing constitution files")
    args = parser.parse_args(argv)
    try:
        written = import_paper_constitutions(args.path, args.into, prefix=args.prefix, overwrite=args.overwrite)
    except ConstitutionError as err:
        print(f"charlab: error: {err}", file=sys.stderr)
        return 2
    for path, constitution in written:
        questions = sum(len(t.all_questions()) for t in constitution.traits)
        print(f"{path}: {len(constitution.traits)} traits, {questions} questions")
        print(f"  use it: python -m charlab.train persona=custom persona.name={constitution.name} ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
