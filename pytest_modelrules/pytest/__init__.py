"""The pytest plugin's logic, in small modules; ``pytest_modelrules.plugin`` holds only hooks.

- options: command-line and ini options, run specs (``--model-run``), precedence
- config_rules: rules declared in pyproject.toml / ini, parsed into RuleSpecs
- session: the per-process state (runs opened once, rule results cached per run+rule+params)
- items: the collected test items for config-declared rules
- fixtures: ``model_run``, ``baseline_run``, ``trained_run``
- report: terminal summary, JUnit properties, verdicts.json, the HTML report
- hookspecs: the plugin's own hooks (``pytest_modelrules_result`` ...)

Nothing here imports numpy, torch or matplotlib at import time.
"""
