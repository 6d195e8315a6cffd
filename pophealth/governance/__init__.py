"""What information governance audits: column lineage from each mart column to its source, the hash chains of
the re-identification and key-rotation logs, what analysts could still single out, and the IG report.

May import every room up to `pophealth.marts`; not `reports`, `operate`, `synth` or the command line.
"""
