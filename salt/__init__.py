"""salt: group-based RLVR post-training with SALT advantage reweighting.

See ``salt/ARCHITECTURE.md`` for the map of the package and ``README.md`` for the commands.
"""

__version__ = "0.1.0"
