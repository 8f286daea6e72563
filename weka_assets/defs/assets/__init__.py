"""The assets, one module per asset (or per family of like assets), in the order of the chain:
raw -> scope -> decoded -> replay, blast_radius, live, exports."""
