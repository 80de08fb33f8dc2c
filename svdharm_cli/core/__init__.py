"""The numeric core: the method on arrays in memory, what the CLI and the transforms both
stand on.

``backend`` (NumPy, and torch when a tensor is given), ``bands`` (the decomposition into a
base and bands), ``methods`` (harmonize, de-harmonize, pooled moments, seeds), ``volume``
(the method on a volume's slices), ``decomposition`` (a decomposition kept as data),
``masks`` (the automatic foreground), ``reference`` (the Reference type and its JSON) and
``device`` (where the numbers are computed). Arrays in, arrays out: no module here walks a
folder, writes a file or starts a pool (the one file it reads is a reference JSON handed to
``Reference.read``).
"""
