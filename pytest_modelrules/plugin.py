"""pytest hooks of pytest-modelrules (placeholder until the plugin lands)."""
