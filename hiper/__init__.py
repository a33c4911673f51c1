"""hiper: hierarchical plan-execute RL (HiPER) with Hierarchical Advantage Estimation for LLM agents.

Data flows one way: protocol -> envs -> rollout -> batch -> advantage -> losses -> config -> models -> trainer
(docs/architecture.md; import-linter enforces it in ``make test``).
"""

__version__ = "0.1.0"
