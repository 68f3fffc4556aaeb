"""What every test shares: the built-in modules are registered.

The program's entry point imports `kittiwake.modules` (the composition
root); tests that build configurations without going through it need the
same list, so it is imported once here.
"""

import kittiwake.modules  # noqa: F401  (registers every built-in module)
