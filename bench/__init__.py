"""ailf's benchmarks: ``python -m bench`` runs the suite (:mod:`bench.suite`).

Run from the repository root with the ``bench`` extra installed
(``pip install -e '.[bench]'``: matplotlib and the peer frameworks).
"""
