"""Every registered search-space kind passes the space suite (evomerge.testing.spaces)."""

from evomerge.testing.spaces import SpaceSuite


class TestSpaceKinds(SpaceSuite):
    """Parametrized over ``SPACE_KINDS.names()``, each with its example in ``EXAMPLES``."""
