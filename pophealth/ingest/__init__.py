"""The first rooms of the data's walk: the landing folder, pseudonymisation at source, each feed's rows, and the
load (stage, then publish) with its audit of every row: loaded, quarantined with a reason, or removed by an
opt-out.

May import `pophealth.config`, `contract`, `warehouse` and `identity`; nothing above (the quality gates, which
judge what is staged here, sit above it).
"""
