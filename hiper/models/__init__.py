"""Models: the policy and its KL reference (:mod:`hiper.models.policy`), the multi-head critic
(:mod:`hiper.models.critic`) and tokenizers (:mod:`hiper.models.tokenizer`)."""
