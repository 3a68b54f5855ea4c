"""One compressed-forward module per model family; see ``runner.py`` for the shared part."""
