"""The load harness behind benches/load/bench.py, split so that one change touches one file.

Layout (every module's docstring says why it exists):

  procs.py         processes the harness starts, /proc accounting (CPU seconds, peak RSS), the
                   quiet-machine check
  machine.py       facts recorded with every run: machine, commit, tool versions; the database
  client.py        the HTTP client used for setup and checks (not for load)
  generators.py    load generators: wrk / the Python fallback (closed loop), oha (open loop)
  upstream.py      the static upstream every target proxies to
  peers/           one module per proxy under test: gateway.py (portcullis itself), nginx.py,
                   haproxy.py, envoy.py; peers/__init__.py starts and verifies them
  measurements/    one module per measurement, run in ORDER: closed-loop targets, one
                   connection, open loop, login, storm, refresh, RSS, revocation, access log and
                   realistic config, scaling, profile
  report.py        headline ratios, verdicts, results.json/results.md/SVG, the README block
  main.py          options, the run's setup and the loop over the measurements

Adding a peer: a new file in peers/ (see peers/__init__.py for the interface); it is discovered,
started, verified, measured and reported. Adding a measurement: a new file in measurements/
(see measurements/__init__.py); its results, Markdown, verdicts and charts come from the same
file. Standard library only: wrk, oha, nginx, HAProxy and Envoy are external binaries.
"""
