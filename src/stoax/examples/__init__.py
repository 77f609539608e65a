"""Worked examples, runnable from the command line: ``stoax train digits``, ``stoax train
charlm``."""
