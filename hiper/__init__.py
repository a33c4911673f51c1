"""hiper: hierarchical plan-execute RL (HiPER) with Hierarchical Advantage Estimation for LLM agents.

Data flows one way: env -> protocol (prompt, parse) -> rollout -> turn batch -> advantage -> loss -> update.
The core (``hiper.protocol``, ``hiper.protocol.spans``, ``hiper.advantage``, ``hiper.envs``) imports no trainer.
"""

__version__ = "0.1.0"
