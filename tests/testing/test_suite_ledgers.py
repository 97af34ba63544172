"""Every registered ledger kind passes the ledger suite (evomerge.testing.ledgers)."""

import pytest

from evomerge.testing.ledgers import LedgerSuite


class TestLedgers(LedgerSuite):
    """Parametrized over ``LEDGERS.names()``: a new kind is checked by being registered (give it
    options below if it needs any)."""

    @pytest.fixture
    def ledger_spec(self, ledger_kind, tmp_path):
        if ledger_kind == "sql":  # a database server's ledger, on a local SQLite database
            from evomerge.config.run import LedgerSpec

            return LedgerSpec(kind="sql", url=f"sqlite:///{tmp_path / 'ledger-server.sqlite'}")
        return ledger_kind
