"""The `ledgerq` command line (console script `ledgerq`, or `python -m cli`).

main.py      the argument parser, the process commands (api, worker, beat, flower, migrate,
             config, import-prices) and their child command lines
dev.py       `ledgerq dev`: API, worker and beat supervised together, embedded servers if needed
common.py    what both share: consoles, settings, connection errors, the API port check
`ledgerq bench` is registered from the bench package (bench/).
"""
