"""Which merge methods exist, by name, without loading the merge engine.

The recipe validates ``merge_method`` against this catalogue, so reading a
recipe needs neither torch nor the engine. Each entry names the module that
implements the method (``@merge_method`` there registers its ``MethodSpec``
when the module is first imported). A new method is one module under
``evomerge/merge/`` and one line here; a plugin package can instead declare an
entry point in the ``evomerge.merge_methods`` group.
"""

from __future__ import annotations

from evomerge.registry import Registry

METHODS: Registry = Registry(
    "merge method",
    {
        "linear": "evomerge.merge.linear",
        "passthrough": "evomerge.merge.passthrough",
        "slerp": "evomerge.merge.slerp",
        "nuslerp": "evomerge.merge.nuslerp",
        "model_stock": "evomerge.merge.model_stock",
        "nearswap": "evomerge.merge.nearswap",
        "multislerp": "evomerge.merge.multislerp",
        "karcher": "evomerge.merge.karcher",
        "sce": "evomerge.merge.sce",
        "arcee_fusion": "evomerge.merge.arcee_fusion",
        "ram": "evomerge.merge.ram",
        "ramplus_tl": "evomerge.merge.ram",
        "lines": "evomerge.merge.lines",
        "pcb": "evomerge.merge.pcb",
        "cabs": "evomerge.merge.cabs",
        "task_arithmetic": "evomerge.merge.task_arithmetic",
        "ties": "evomerge.merge.task_arithmetic",
        "dare_linear": "evomerge.merge.task_arithmetic",
        "dare_ties": "evomerge.merge.task_arithmetic",
        "breadcrumbs": "evomerge.merge.task_arithmetic",
        "breadcrumbs_ties": "evomerge.merge.task_arithmetic",
        "della": "evomerge.merge.task_arithmetic",
        "della_linear": "evomerge.merge.task_arithmetic",
        "tsv": "evomerge.merge.tsv",
        "iso_c": "evomerge.merge.isotropic",
        "iso_cts": "evomerge.merge.isotropic",
        "star": "evomerge.merge.star",
    },
    entry_points="evomerge.merge_methods",
)

# mergekit methods evomerge has not implemented yet (a recipe naming one is refused with this
# list in the message, not with "unknown method"). None for mergekit 0.1.5: every method it
# registers is here (tests/merge/test_mergekit_parity.py checks it against mergekit).
MERGEKIT_ONLY_METHODS: tuple[str, ...] = ()

# evomerge methods that mergekit 0.1.5 lacks (or, for ``cabs``, spells with other parameters):
# a recipe using one exports no mergekit config (mergekit could not run it).
EVOMERGE_ONLY_METHODS: tuple[str, ...] = ("lines", "pcb", "cabs", "tsv", "iso_c", "iso_cts", "star")
