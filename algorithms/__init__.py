"""The shipped algorithms, one Strategy per module, installed as ``distlib.algorithms``.

Each module registers its Strategy by name; :data:`distlib.strategy.STRATEGIES` knows which
module holds which name and imports it on first use, so nothing here needs importing.
"""
