"""Files: everything that touches the disk, and no arithmetic.

``formats/`` (one module per file format behind one interface; the reading boundary),
``plan`` (the walk of an input tree, DICOM series grouping, output paths: the inputs of a
run), ``inputs`` (reading one input's images and masks), ``atomic`` (temporaries and
renames), ``safety`` (the output lock, signals, sweeps, quiet libraries) and ``provenance``
(the record in OUT of what made each output).
"""
