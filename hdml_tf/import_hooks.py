"""Run code around the first import of a top-level module (Python has no such hook).

Used twice: to register hdml_tf's Keras classes once ``keras`` is imported
(``hdml_tf/__init__.py``) and to keep TensorFlow's start-up logs off a command's
output (``hdml_tf/cli.py``). No TensorFlow or Keras import happens here.
"""

import importlib.abc
import importlib.util
import sys


class AroundImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A finder that answers for one module name, once, and wraps its real loader.

    ``around(load)`` is called instead of loading the module; it must call ``load()``
    (which executes the module) and may do work before and after it.
    """

    def __init__(self, name, around):
        self.name, self.around = name, around

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # find the real spec, and answer only once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # The module sees its own loader (importlib.resources and the like ask it).
        module.__loader__ = module.__spec__.loader = self._loader
        self.around(lambda: self._loader.exec_module(module))


def around_import(name, around):
    """Install an `AroundImport` for ``name`` unless the module is loaded or one is
    installed already. Returns False when ``name`` was already imported."""
    if name in sys.modules:
        return False
    if not any(isinstance(f, AroundImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, AroundImport(name, around))
    return True
