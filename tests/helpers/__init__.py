"""Shared test helpers, one module per tool: tiny configs (``train``, ``detection``, ``search``, ``pipeline``),
test data (``data``) and random genotypes (``genotypes``). Imported as ``helpers.<module>``: pytest puts
``tests/`` on ``sys.path`` (rootdir-relative, no ``__init__.py`` in ``tests/``)."""
