"""ipywidgets panels for the labs (import from the submodules). Imported only by labs."""
