"""Builders of the embedded DEMO data in ``veco2/demo_data/`` (offline, real sources).

:mod:`veco2.demo.corpus` builds the demo corpus from translations shipped in Debian packages and
loads it back (``veco2 data build-demo``); :mod:`veco2.demo.tasks` builds the demo XTREME task data
from that corpus (``veco2 data build-demo-tasks``).  Demo scores are not comparable with published
numbers.  The corpus readers for real runs are in :mod:`veco2.data`.
"""
