"""Who a person is, kept out of sight: keys, pseudonymisation, the vault of encrypted identifiers, the pseudonyms
by purpose, and the rotation of the linkage key.

Nothing identifiable leaves this room in clear. May import `pophealth.config`, `pophealth.contract` and
`pophealth.warehouse`; nothing above.
"""
