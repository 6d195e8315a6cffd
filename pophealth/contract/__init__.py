"""The input layer: what the sources send and on what terms.

Owns each feed's declaration (feeds.py: its files, arrival, columns, identifiers and raw table; every list of
feeds elsewhere is derived from it), the identifier types (an NHS number, a pseudonym, an ICD-10 code that cannot
be mixed up or printed by accident) and the data sharing register (which source may be loaded, under which
agreement, for which purposes). Every other room reads the contract from here, and this package imports nothing
of the platform but `pophealth.config`.
"""
