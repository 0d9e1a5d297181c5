"""Training presets: one module per experiment, each with ``get_config()``.

``hdml-tf presets`` lists them; ``hdml-tf train --config <name>`` runs one.
"""
