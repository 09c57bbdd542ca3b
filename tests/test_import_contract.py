"""The trust boundary as a checked contract: who may import whom, over the whole import graph.

grimp (the graph behind import-linter) sees every import, function-level ones included, and follows chains, so
a miner module that imports a helper that imports the ledger breaks a rule as surely as a direct import does.
The rules are data here rather than an import-linter config because one of the packages they protect (the
privacy key-release side, ``heurist.privacy.keyrelease``) does not exist yet, and import-linter refuses a
contract that names a missing module: this test holds the rule from the day it lands.
Each rule's failure message is the offending chain, module by module.
"""

from __future__ import annotations

import grimp
import pytest

# The miner side runs on strangers' machines: it never holds ledger, credit, gateway, economy or key-release code.
MINER_SIDE = ("workers.miner", "tasks.miner")
TRUSTED_ONLY = ("heurist.ledger", "heurist.credits", "heurist.gateway", "heurist.economy", "heurist.outbox",
                "heurist.privacy.keyrelease")
# The client, the gateway and the ledger start fast and run without a GPU stack.
TORCH_FREE = ("heurist.client", "heurist.gateway", "heurist.ledger", "heurist.settlement")
TORCH = ("torch", "diffusers", "transformers")
# The one way the gateway reaches torch: AI search embeds queries with MiniLM, importing torch and transformers
# inside this module's functions on the first search (tests/test_search.py checks the gateway starts without).
LAZY_TORCH = {"heurist.search.embedder": ("torch", "transformers")}


def build() -> grimp.ImportGraph:
    return grimp.build_graph("heurist", "tasks", "workers", include_external_packages=True, cache_dir=None)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return build()


def chains(graph: grimp.ImportGraph, importers: tuple[str, ...], imported: tuple[str, ...]) -> list[str]:
    """Every shortest import chain from a package of ``importers`` to one of ``imported`` (absent ones: none)."""
    return sorted(" -> ".join(chain) for src in importers if src in graph.modules for dst in imported
                  if dst in graph.modules for chain in graph.find_shortest_chains(importer=src, imported=dst))


def test_the_miner_side_never_imports_the_trusted_side(graph: grimp.ImportGraph) -> None:
    assert chains(graph, MINER_SIDE, TRUSTED_ONLY) == []


def test_guarded_packages_stand_where_the_rules_look(graph: grimp.ImportGraph) -> None:
    """A rule on a package that does not exist yet holds only if it lands under that name: once ``heurist.privacy``
    exists, its key-release side must be ``heurist.privacy.keyrelease`` (or this list must follow it)."""
    for guarded in TRUSTED_ONLY:
        parent = guarded.rpartition(".")[0]
        if parent != "heurist" and parent in graph.modules:
            assert guarded in graph.modules, f"{parent} exists but {guarded} does not: rename it here or there"


def test_client_gateway_and_ledger_never_import_torch() -> None:
    pruned = build()  # a graph of its own: the sanctioned lazy imports are taken out of it
    for module, packages in LAZY_TORCH.items():
        for package in packages:
            pruned.remove_import(importer=module, imported=package)
    assert chains(pruned, TORCH_FREE, TORCH) == []


def test_the_ledger_never_imports_the_audit(graph: grimp.ImportGraph) -> None:
    """The ledger owns its data (standing, audit entries); the audit's policy imports it, never the reverse."""
    assert chains(graph, ("heurist.ledger",), ("heurist.audit", "workers")) == []


def test_the_library_reaches_the_compute_side_only_through_the_cli(graph: grimp.ImportGraph) -> None:
    """``workers`` (torch, model files, the miner's runtime) is started by ``heurist miner``/``auditor``/``bench``;
    no other part of the library imports it."""
    library = tuple(sorted(m for m in graph.find_children("heurist") if m != "heurist.cli"))
    assert chains(graph, library, ("workers",)) == []


def test_task_contracts_stay_thin(graph: grimp.ImportGraph) -> None:
    """Tasks parse a message and call a service; the work lives in the roles that hold those services."""
    assert chains(graph, ("tasks",), ("workers", "heurist.ledger", "heurist.audit", "heurist.credits")) == []


def test_the_checker_sees_chains_where_they_are(graph: grimp.ImportGraph) -> None:
    """The rules above could fail: the same check finds the chains that do exist on the other sides."""
    assert any(c.endswith("torch") for c in chains(graph, ("workers.miner",), TORCH))
    assert chains(graph, ("workers.audit",), ("heurist.ledger",))
    assert chains(graph, ("heurist.gateway",), ("torch",)), "the search embedder's lazy torch import is seen"
