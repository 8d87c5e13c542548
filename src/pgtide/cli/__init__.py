"""The ``pgtide`` command line: one module per command group, all registered in :mod:`.app`."""
