"""The AURA model: one paper box per file (the table of boxes and files is in docs/ARCHITECTURE.md)."""
