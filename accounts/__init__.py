"""The account matrix: org units, accounts, subscribers and their ledger, replies, menus, QR codes."""
