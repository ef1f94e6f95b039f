"""Live ipywidgets interfaces for Jupyter, one module per interface; they need a running kernel."""
