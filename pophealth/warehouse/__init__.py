"""The warehouse itself: the connection to PostgreSQL, its schemas (schema.sql), its roles and grants (access.sql)
and the audit records every other room writes into and reads back.

May import `pophealth.config` and `pophealth.contract`; nothing above.
"""
