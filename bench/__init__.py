"""The benchmark: every figure beside a ceiling measured in the same run.

    bash scripts/bench.sh        (or, from a source checkout: python -m bench)

Not part of the installed package: it runs from a source checkout, and needs nothing from
``tests/`` (the Nightscout site it talks to is :mod:`bench.nightscout_site`, the broker
:mod:`bench.broker`).
"""
