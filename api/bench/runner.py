"""Runs one bench workload end to end: setup, load, settle, measure, verify, report."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    print("ledgerq bench: not implemented yet", file=sys.stderr)
    return 2
