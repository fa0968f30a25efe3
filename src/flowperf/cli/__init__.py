"""The command line: parses flags, calls one function of another package, prints.

Owns: the typer app (`main.py`, which only registers command modules), one module per command group,
and `options.py`, where every option group is declared once from the RunConfig fields it sets.
May import: any flowperf package; this is the top of the stack.
Must not import: nothing is off limits here, but commands hold no logic of their own: each parses
its flags and calls into the package that owns the work (other packages reach in only for options.py).
"""
