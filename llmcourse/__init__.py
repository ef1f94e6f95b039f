"""llmcourse: build a GPT-style language model from scratch in PyTorch.

Each module holds the one implementation of a stage of the course; the chapters build each
piece step by step and then use the version here.
"""

__version__ = "0.1.0"
