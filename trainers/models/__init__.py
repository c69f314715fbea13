"""The model zoo: one file per model citing its paper's equations, shared blocks in named
modules (``next_item``: next-item targets inside a history). ``trainers/registry.py`` maps
names to classes and imports every model module listed there."""
