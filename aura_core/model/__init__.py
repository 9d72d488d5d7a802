"""The AURA model: one paper box per file (see aura_core/model/README in docs/ARCHITECTURE.md)."""
