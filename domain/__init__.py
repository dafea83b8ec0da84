"""Pure ledger rules (money, accounts, operations, postings): standard library only, no I/O."""
