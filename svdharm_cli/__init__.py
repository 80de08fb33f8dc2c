"""svdharm: SVD band harmonization and de-harmonization of medical images.

The numeric core (:mod:`svdharm_cli.bands`, :mod:`svdharm_cli.methods`,
:mod:`svdharm_cli.reference`) works on numpy arrays and never touches files; the
command line lives in :mod:`svdharm_cli.cli`.
"""

__version__ = "0.2.0"
