"""The HiPER trainer: one iteration (:mod:`hiper.trainer.algorithm`) and the shell around it.

* :mod:`hiper.trainer.algorithm`: one HiPER iteration top to bottom, and the critic / actor updates;
* :mod:`hiper.trainer.forward`: the no-grad passes (log-probs, values, beta);
* :mod:`hiper.trainer.trainer`: ``Trainer(config).train()``: models, engine, tasks, SFT, eval, checkpoints;
* :mod:`hiper.trainer.sft` (behaviour cloning), :mod:`hiper.trainer.checkpoint`, :mod:`hiper.trainer.logging`,
  :mod:`hiper.trainer.metrics`, :mod:`hiper.trainer.demo` (the CPU demo), ``cli_train`` / ``cli_sft``.
"""
