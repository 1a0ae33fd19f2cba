"""The measurements, one module each, run by main.py in ORDER.

A measurement is one module in this package with:

  KEY      its key in results.json (res[KEY] = run(ctx))
  ORDER    run order; the ones measuring the proxy peers (PEERS = True) come first: the peers
           are stopped after the last of them, so that they do not hold memory or sockets
           during the gateway-only measurements
  TITLE    its name in the log and in notes
  PEERS    True when it measures the proxy peers
  ESSENTIAL  True: a failure ends the run; otherwise it becomes a note and the run goes on
  run(ctx) -> result (None: not measured)

and optionally:

  wanted(args) -> bool     whether this run does it (default: always)
  options(ap)              its command-line options (argparse)
  headline(res) -> dict    its ratios, merged into results.json's "headline"
  verdicts(h) -> [(target text, value, ok(value) -> bool, format)]   rows of the verdict table
  md_tables(res) -> [lines]    Markdown before the verdict table (tables)
  md_bullets(res) -> [lines]   Markdown after it (one bullet per finding)
  charts(res) -> {file name: SVG text}

`ctx` is main.py's run context (args, procs, notes, the gateway, the token, the targets, ...).
"""

import importlib
import pkgutil


def modules():
    """The measurement modules in ORDER."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        m = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(m, "ORDER") and hasattr(m, "run"):
            found.append(m)
    return sorted(found, key=lambda m: m.ORDER)
