"""The marts: running dbt over the warehouse (build.py), the risk model behind the risk stratification, and
the dbt documentation site.

May import the rooms below it (`config`, `contract`, `warehouse`, `identity`, `ingest`, `quality`); nothing
above.
"""
