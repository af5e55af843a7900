"""Exit heads, exit policies and exit losses. Depends on nothing else of ours."""
