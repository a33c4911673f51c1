"""Adapters from the engine-agnostic hiper core to external RL frameworks.

``hiper.integrations.verl``: a verl 0.9.1 plugin (agent loop, v1 trainer mode, role-aware losses); install
with ``pip install 'hiper[verl]'``. The adapters import their framework lazily; the row <-> turn-batch
conversion (``hiper.integrations.verl.convert``) imports only torch.
"""
