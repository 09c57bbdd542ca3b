"""Shared fixtures, one module per concern under tests/fixtures/ (real services: no mocks on the job path)."""

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.ledger",
    "tests.fixtures.s3",
    "tests.fixtures.broker",
    "tests.fixtures.models",
    "tests.fixtures.network",
    "tests.fixtures.dbfaults",
    "tests.fixtures.evm_node",
]
