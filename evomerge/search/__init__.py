"""Search: spaces (the genome codec); optimisers and the controller follow."""

from evomerge.search.space import Gene, ParameterSpace, SearchSpaceError

__all__ = ["Gene", "ParameterSpace", "SearchSpaceError"]
