"""The rules: SageMaker Debugger's built-ins that fit PyTorch, this project's own, custom rules."""
