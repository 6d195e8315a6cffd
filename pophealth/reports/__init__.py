"""What the Health and Wellbeing Boards read: the board report, with the geographies it is reported for, each
source's coverage, and the intervals around every published rate.

May import every room up to `pophealth.marts`; not `governance`, `operate`, `synth` or the command line.
"""
