"""Versioned index migrations: `NNNN_<name>.<engine>.sql`, applied in order by `schema.py`.

A package (not a bare folder) so the `.sql` files ship as package data and load through
`importlib.resources` from a wheel as well as from a checkout.
"""
