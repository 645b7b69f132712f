"""The reproduction grid: the paper's claims measured side by side (``python -m more3s.reproduce``).

grid.py says what is run (arms, profiles, cells), cells.py runs one cell, claims.py judges the claims,
outputs.py writes the tables and the plot, __main__.py dispatches the grid with submitit.
"""

from .claims import ClaimResult, bootstrap_difference, evaluate_claims
from .grid import ARMS, PROFILES, Cell, build_cells

__all__ = ["ARMS", "PROFILES", "Cell", "build_cells", "ClaimResult", "bootstrap_difference", "evaluate_claims"]
