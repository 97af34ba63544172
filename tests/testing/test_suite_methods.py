"""Every registered merge method passes the merge-method suite (evomerge.testing.methods)."""

from evomerge.testing.methods import MethodSuite


class TestMergeMethods(MethodSuite):
    """Parametrized over ``METHODS.names()``: a new method is checked by being registered."""
