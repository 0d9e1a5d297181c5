"""Names kept for one release after a rename or a move, and names loaded on first use.

A module lists them and sets ``__getattr__ = module_getattr(__name__, ...)``; Python
calls it only for names the module does not define. A deprecated name warns with a
``DeprecationWarning`` at every use and resolves to its replacement; a lazy name is
imported on first use, without a warning, and kept in the module.

Targets are written ``"package.module:name"``, or ``"package.module"`` for a module.
"""

import importlib
import sys
import warnings


def resolve(target):
    """The object a ``"package.module:name"`` (or ``"package.module"``) target names."""
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, name) if name else module


def warn(old, use, stacklevel=2):
    """Warn that ``old`` goes in the next release and ``use`` replaces it.

    ``stacklevel`` counts from the caller of `warn`: 2 names the caller's caller.
    """
    warnings.warn(f"{old} is deprecated and will be removed in the next release; "
                  f"use {use}", DeprecationWarning, stacklevel=stacklevel + 1)


def module_getattr(module_name, deprecated=None, lazy=None):
    """A module-level ``__getattr__`` for ``module_name``.

    Args:
      module_name: the module's ``__name__``.
      deprecated: {old name: target}; each use warns and returns the target.
      lazy: {name: target}; imported on first use and stored in the module.
    """
    deprecated, lazy = dict(deprecated or {}), dict(lazy or {})

    def __getattr__(name):
        if name in lazy:
            value = resolve(lazy[name])
            setattr(sys.modules[module_name], name, value)
            return value
        if name in deprecated:
            target = deprecated[name]
            warn(f"{module_name}.{name}", target.replace(":", "."))
            return resolve(target)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__
