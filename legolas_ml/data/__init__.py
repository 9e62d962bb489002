"""Stage 1-2: the tenant store, the quality gate, review import, demo data and the splits."""
