"""Writing runnable run configs and spaces for the user: from a mergekit-evolve config
(``evomerge convert mergekit-evolve``) or from flags (``evomerge init``)."""
