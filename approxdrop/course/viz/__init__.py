"""Plotly figure builders for the labs (import from the submodules). Imported only by labs and widgets."""
