"""The quality gates: Great Expectations rules over each staged load (gates.py) and over the candidate marts
(marts_gate.py), with their Data Docs. Bad data stops the pipeline, visibly, and the results are kept. The rules
are read once into rule objects (rules.py); both gates run them the same way (validation.py).

May import `pophealth.config`, `contract`, `warehouse`, `identity` and `ingest`; nothing above.
"""
