"""Layer 3, frontend: graphs from TOML specs (spec.py) and the op functions of the Python builder
API (functions.py)."""
