"""What this host can run: its facts gathered (``facts``), then judged (``capabilities``).

``pyvmm check`` prints the judgement; the facts are plain data so that the
judgement is tested with made-up hosts.
"""
