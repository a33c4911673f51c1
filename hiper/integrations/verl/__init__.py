"""hiper on verl 0.9.1 (extra ``hiper[verl]``): agent loop, v1 trainer mode, role-aware losses.

Modules: ``convert`` (verl rows <-> hiper turn batch; torch only), ``advantage`` (the advantage step over rows;
torch only), ``losses`` (pure-torch cores + verl loss adapters), ``agent_loop`` (``HiPERAgentLoop`` and the
verl-free ``run_session``), ``trainer`` (``HiPERTrainer``, trainer mode ``hiper_sync``), ``data`` (task parquet
writer) and ``plugin`` (the ``verl.plugins`` entry point). Nothing here imports verl at package import time;
see ``docs/scale_out.md``.
"""
