"""Test-suite defaults.

Generation steps run in plain graph mode here (TFHIER_XLA_GENERATION=0, inherited by the command lines the
tests start): compiling every tiny model's step with XLA would cost CI minutes on 2 cores.  The XLA path,
the default for users, is tested where it matters: cached == naive for every registered model
(tests/test_model_contract.py) and MS-STCN's generator in every layout (tests/test_generation.py) set
``model.xla_generation = True``.
"""

import os

os.environ["TFHIER_XLA_GENERATION"] = "0"
# Likewise the recurrent models' default XLA-compiled training step (train.py without --[no]jit_compile): graph
# mode here, except in tests/test_recurrent_split.py's check of the default.
os.environ["TFHIER_XLA_TRAINING"] = "0"
