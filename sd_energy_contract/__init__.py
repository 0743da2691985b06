"""The contract every package of the toolkit shares, with no dependency on any of them.

``app`` (the workload), ``profiling`` (the launcher and the sensors) and ``power_modeling``
(the analysis) talk through files and environment variables. What those files and variables are
called and hold is defined here once, so the three cannot drift apart:

* ``env``     the environment variables of the app <-> launcher contract (one prefix, ``SD_ENERGY_``)
* ``phases``  the app's phase names, which of them nest, which are steady-state work
* ``layout``  the results directory: its files, ``runs.csv`` columns, run ids, final statuses
* ``reference`` the reference-data CSV format (the V100 tables and what our own CSVs may add)
* ``gpus``    the GPU specs file (``configs/gpus.yaml``)
* ``files``   atomic writes and torn-line handling (a crash leaves at most one unterminated line)
* ``workload`` the in-process workload protocol (load once, run many times) and its entry-point group
* ``errors``  ``InputError``: a user's bad option, which each command line prints as one line, exit 2

Nothing here imports the packages above it, click, torch, numpy or pandas (a test checks).
"""
