"""svdharm: SVD band harmonization and de-harmonization of medical images.

The numeric core (:mod:`svdharm_cli.core.bands`, :mod:`svdharm_cli.core.methods`,
:mod:`svdharm_cli.core.reference`) works on numpy arrays and never touches files; the
command line lives in :mod:`svdharm_cli.ui.app`.
"""

__version__ = "0.2.0"
