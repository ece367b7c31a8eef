"""Hypothesis settings for the whole suite: no per-example deadline. The suite runs on a loaded 2-core
machine, where a pause of one example (a GC pass, CPU steal) over Hypothesis's default 200 ms failed a
property test as "unreliable test timings" for no fault of the code under test."""

from hypothesis import settings

settings.register_profile("tidings", deadline=None)
settings.load_profile("tidings")
