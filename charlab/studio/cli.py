"""`charlab-studio`: start the Studio with Streamlit, bound to 127.0.0.1 unless told otherwise.

charlab-studio                      # http://127.0.0.1:8501
charlab-studio --port 8600
charlab-studio --address 0.0.0.0    # reachable from other machines: only on a trusted network
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

APP = Path(__file__).with_name("app.py")


def streamlit_argv(address: str, port: int, headless: bool, extra: list[str]) -> list[str]:
    """The `streamlit run` command line for the Studio."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.headless",
        "true" if headless else "false",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",  # no "Deploy" button: the Studio runs on the user's own machine
        *extra,
    ]


def main(argv: Optional[list[str]] = None) -> None:
    """Parse the options and replace this process with Streamlit."""
    parser = argparse.ArgumentParser(prog="charlab-studio", description="Start the charlab Studio (Streamlit).")
    parser.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--headless", action="store_true", help="do not open a browser")
    args, extra = parser.parse_known_args(argv)
    command = streamlit_argv(args.address, args.port, args.headless, extra)
    print(f"charlab Studio on http://{args.address}:{args.port}", flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
