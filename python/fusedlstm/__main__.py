"""``python -m fusedlstm``: the command line of fusedlstm.

    python -m fusedlstm                 self-check against the float64 reference + a short benchmark
    python -m fusedlstm bench --quick   the benchmark front end (fusedlstm vs torch, onnxruntime, ...)
    python -m fusedlstm info            machine, build, peers
    python -m fusedlstm --version

The ``fusedlstm`` console script runs the same. The code is in
``fusedlstm/cli/``: the parser in ``__init__.py``, one module per subcommand.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
