"""The one base of the errors the suite raises for bad input or an environment it cannot use.

Every such error says what is wrong and how to fix it, before work starts where it can. The CLI prints
any :class:`VlaForgetError` as one line, ``vla-forget COMMAND: error: ...``, and exits 2; library callers
can catch the base to tell them from bugs. Each error also keeps the built-in class it has always been
(``SpecError`` is a ``ValueError``, ``BenchError`` a ``RuntimeError``, ...), so existing handlers still work.
"""


class VlaForgetError(Exception):
    """Bad input, a missing file or asset, or an environment the suite cannot use: said, not a bug."""
