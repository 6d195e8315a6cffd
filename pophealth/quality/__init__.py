"""The quality gates: Great Expectations rules over each staged load (gates.py) and over the candidate marts
(marts_gate.py), with their Data Docs. Bad data stops the pipeline, visibly, and the results are kept.

May import `pophealth.config`, `contract`, `warehouse`, `identity` and `ingest`; nothing above.
"""
