"""Figures of the chapters: plotly figures too long to write in a notebook, one module per topic."""
