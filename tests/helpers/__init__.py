"""Shared test helpers, one module per tool: tiny configs (``train``, ``detection``, ``search``, ``pipeline``),
test data (``data``), random genotypes (``genotypes``), a tool's jobs forked from a server that imported it once
(``jobs``) and lines read from a pipe under a deadline (``lines``). Imported as ``helpers.<module>``: pytest puts
``tests/`` on ``sys.path`` (rootdir-relative, no ``__init__.py`` in ``tests/``)."""
